"""Infrastructure as code of the fruits pipeline: ``template.yaml`` (CloudFormation) and ``deploy.py`` (its CLI)."""

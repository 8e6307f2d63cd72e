"""The NASExperiment resource: its models, the rules between fields, and the CRD generated from both."""

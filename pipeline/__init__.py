"""Pipeline stages: read input datasets, call dspo_core, publish the output dataset.

Every stage is a plain function (`pipeline.stages.STAGES[name].run`) usable without Prefect.
"""
__version__ = "0.1.0"

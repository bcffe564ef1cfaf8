from pipeline.cli import app

"""The labelling web app: `dspo label serve`.

An annotator logs in with a token, sees one instance at a time (its crop with the mask outline
from each of the N candidates, the LQ and HR crops for reference), picks the best and the worst
candidate from the keyboard, flags a hallucination with a description, and moves on. Tasks are
served smallest IQA reward gap first (pipeline.labels.app.tasks); labels are checked at once and
published as `human_labels` versions in batches (pipeline.labels.app.book); the stats page shows
inter-annotator agreement (pipeline.labels.app.stats). Auth: pipeline.labels.app.auth.

    from pipeline.labels.app import Annotators, LabelAppConfig, create_app, serve
    token = Annotators(state_dir).add("alice")                 # shown once; stored as a hash
    app = create_app(store, LabelAppConfig(state_dir=state_dir))  # an ASGI app (FastAPI)
    serve(store, LabelAppConfig(state_dir=state_dir, port=8765))  # binds 127.0.0.1, runs until SIGTERM
"""
from pipeline.labels.app.auth import Annotators, AuthError
from pipeline.labels.app.config import LabelAppConfig
from pipeline.labels.app.server import create_app, serve

__all__ = ["Annotators", "AuthError", "LabelAppConfig", "create_app", "serve"]

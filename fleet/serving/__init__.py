"""The model server: one process that serves any model of the fleet (docs/serving.md).

Only what runs inside every model image lives here: these files (with `fleet.schema`
and `fleet.errors`, `fleet.hashing.MODEL_IMAGE_CODE`) are the image's code and its code
hash, so host-side edits rebuild no model. `python -m fleet.serving` runs it, in the
image and locally (`fleet.host.model_server`); `fleet.serving.service` is the same app as
a BentoML service, for `bentoml build`. Per-model settings reach it through the
environment (see `fleet.serving.config`).
"""

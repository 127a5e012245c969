"""The model server: one BentoML service that serves any model of the fleet.

Only what runs inside every model image lives here: these files (with `fleet.schema`
and `fleet.errors`, `fleet.hashing.MODEL_IMAGE_CODE`) are the image's code and its code
hash, so host-side edits rebuild no model. `fleet.serving.service` is the BentoML
service (run by `bentoml serve` in the image, and locally by `fleet.host.model_server`).
Per-model settings reach it through the environment (see `fleet.serving.config`).
"""

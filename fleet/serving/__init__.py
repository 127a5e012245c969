"""The model server: one BentoML service that serves any model of the fleet.

`fleet.serving.service` is the BentoML service (imported inside every model image and by
`bentoml serve`); `fleet.serving.launch` prepares a model and starts a server locally.
Per-model settings reach the service through the environment (see `fleet.serving.config`).
"""

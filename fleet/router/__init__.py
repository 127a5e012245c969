"""The router: one FastAPI app in front of the whole fleet.

It serves every model on its business path and every A/B experiment on its own path,
validates requests against the model's signature before they leave the router, and
forwards them over one pooled keep-alive HTTP client to the model servers. Made by
`fleet.router.app.create_app(config)` from a routes config (`fleet.router.config`); run with
`python -m fleet.router --config routes.json`.
"""

"""The host layer: every side effect on the machine that builds, profiles or serves locally.

Each kind of side effect has one home here, and everything above (`fleet.commands`,
`profiler`, `components`) calls it and nothing below it:

- `environment`: the process's environment, read once at start (`HOST`);
- `registry`: MLflow access with an explicit tracking URI and credentials, in a child
  process that gets them in its own environment (`worker` is that process);
- `model_store`: the BentoML store (its home fixed when made; models imported by `worker`);
- `model_server`: the command and environment that start one model server locally;
- `processes`: children started, watched, waited for and stopped (one supervisor, one
  readiness wait, one free port);
- `docker_cli`: the Docker CLI (one lookup), registry login into a private config;
- `image_layers`: images assembled from layer tars and loaded into the engine;
- `images`: content hashes and builds of the model images and the router image;
- `demo_registry`: the demo models trained and registered into a local MLflow.

Nothing here sets `os.environ` or MLflow's or BentoML's process-wide state: a child
process gets the environment it needs, so calls on several threads (the Pulumi dynamic
provider serves four) never see each other's settings.
"""

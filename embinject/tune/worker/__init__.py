"""What runs in Ray's worker processes: a trial's trainable, a pack's host (`pack_host`) and its members' thin
trainables (`member`, on `pack_names`: neither imports torch), and the probe
that `tune.pack: auto` measures. Nothing is imported here (see `embinject.tune`); nothing here imports MLflow or
`embinject.tune.driver` (an import-linter contract): a worker starts with what training needs."""

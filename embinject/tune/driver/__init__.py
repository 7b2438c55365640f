"""What runs in the search command's process: planning (`pack_plan`, `warm`, `budget`), Ray's set-up (`cluster`),
Optuna and ASHA (`searcher`, `study`, `internals`), the MLflow callback (`callback`), the status (`progress`) and the
results (`results`, `outcome`); `run` drives a search from start to end. Nothing is imported here."""

"""Hyper-parameter sweeps: a recipe's ``sweep`` section searched with Optuna on the cluster.

``space`` turns a trial's values into the recipe it trains (pure); ``study`` runs the study,
each trial a training run made the way ``surgflow train`` makes one; ``census`` reads a
study's trials (pure: what is left to run, the summary, the best); ``parent_run`` is the
sweep's MLflow run; ``dashboard`` serves optuna-dashboard on the store. Nothing is imported
here, so importing the package stays cheap.
"""

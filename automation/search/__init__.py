"""Recipe search: a multi-objective search over a recipe's typed arguments (and optionally over
recipes), every trial ordinary compress -> evaluate (-> benchmark) work. No Prefect here: the
flow is flows/recipe_search.py; the study lives in Optuna's storage."""

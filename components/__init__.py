"""Pipeline stages. Each folder holds plain functions (the stage logic, testable
without KFP) and ``component.py``, a thin KFP lightweight component around them."""

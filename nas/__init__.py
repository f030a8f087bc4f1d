"""The platform: study file → plan → rounds of trials on Ray Tune → study database (see ARCHITECTURE.md).

config/schema (the validated study) → plan (cells, pre-flight; no Ray) → driver (rounds, resume; no Ray) → execute and
tune_adapter (Ray Tune) → worker and trial (one trial; no Ray) → store (typed records) → stats, summary, export."""

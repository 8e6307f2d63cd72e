"""Size limits of a NASExperiment: one source for the pydantic models, `nasctl validate` and the CRD.

The models use these numbers as `Field(max_length=..., le=...)`, so the generated CRD carries
them as maxItems/maxLength/maximum and the API server refuses what `nasctl validate` refuses,
with the same numbers. Every limit exists because something downstream breaks or costs
without bound past it: the operator serves every team, so one experiment must not be able to
make it build huge strings, run for days per step, or fill etcd.
"""

from __future__ import annotations

from typing import Final

# --- The search space and the model ---------------------------------------------------------
MAX_PARAMETERS: Final = 64
"""Search dimensions. A GP (even SAASBO) gets slow and data-hungry past a few dozen dimensions; 64 is
already generous, and it keeps the CRD's CEL cost of `self == oldSelf` on parameters bounded."""
MAX_CHOICE_VALUES: Final = 128
"""Values of one choice parameter. Unordered choices are one-hot encoded: each value is a model dimension."""
MAX_OBJECTIVES: Final = 6
"""Objectives. qNEHVI's hypervolume partitioning grows exponentially with the objectives and is
impractical beyond about 4-6; Ax itself warns past that."""
MAX_OUTCOME_CONSTRAINTS: Final = 16
"""Outcome constraints: each is one more GP to fit at every generation."""
MAX_PARAMETER_CONSTRAINTS: Final = 16
"""Linear parameter constraints: each makes the acquisition optimizer (SLSQP) slower; 16 is far more than
any real architecture space needs."""
MAX_METRIC_DEFINITIONS: Final = 32
"""Metric definitions: each is read from every trial's event files at every step."""
MAX_ABS_BOUND: Final = 1e15
"""Largest |lower|, |upper| of a range parameter: integers stay exact in a float (2**53 is about 9e15)."""
MAX_SEED: Final = 2**32 - 1
"""Random seeds: numpy and torch take 32-bit seeds."""

# --- The budget --------------------------------------------------------------------------------
MAX_TRIALS: Final = 10_000
# Earlier experiments one experiment may warm-start from (spec.warmStart.experiments).
MAX_WARM_START_SOURCES: Final = 8
# Candidates of the search that stage 2 (spec.fullTraining) may train again in full.
MAX_FULL_TRAINING_CANDIDATES: Final = 100
"""Trials of one experiment. A GP over n points costs O(n^3) per fit: past a few thousand trials each
generation takes minutes, and the state (every trial's parameters and metrics) must fit one ConfigMap."""
MAX_PARALLELISM: Final = 100
"""Trials at once. Bounded by what one operator can poll and by the batch size q that qNEHVI can
optimize jointly (cost grows with q); one experiment must not be able to flood the cluster with Jobs."""
MAX_RETRIES: Final = 10
"""Retries of a failed trial: a trial failing more than this is broken, not unlucky."""
MAX_DURATION_SECONDS: Final = 366 * 86400.0
"""Longest maxDuration or trialTimeout (a year): larger values are typos, and overflow timers."""
MAX_DURATION_LENGTH: Final = 32
"""Characters of a duration string ("1h30m")."""

# --- The trial template ------------------------------------------------------------------------
MAX_COMMAND_ENTRIES: Final = 64
"""Entries of trial.command."""
MAX_ARGS_ENTRIES: Final = 256
"""Entries of trial.args (one flag per parameter and some more)."""
MAX_ENV_ENTRIES: Final = 64
"""Entries of trial.env."""
MAX_MOUNTS: Final = 16
"""Entries of trial.mounts."""
MAX_NODE_SELECTOR: Final = 32
"""Labels in trial.nodeSelector."""
MAX_TOLERATIONS: Final = 32
"""Entries of trial.tolerations."""
MAX_GPUS: Final = 16
"""GPUs of one trial pod (no node has more)."""
MAX_TOLERATION_SECONDS: Final = 2**31 - 1
"""tolerationSeconds (Kubernetes stores an int64; a year is already absurd)."""

# --- String lengths ----------------------------------------------------------------------------
MAX_EXPERIMENT_NAME: Final = 52
"""metadata.name: Job names are "<name>-t<index>" and must stay within 63 characters."""
MAX_NAME_LENGTH: Final = 63
"""Parameter and metric names: they become Prometheus label values, column names and placeholders."""
MAX_TAG_LENGTH: Final = 256
"""TensorBoard tags."""
MAX_IMAGE_LENGTH: Final = 512
"""Container image references (registry, repository, tag and digest)."""
MAX_TEMPLATE_LENGTH: Final = 4096
"""Each command/args entry and env value, before placeholders are filled."""
MAX_ENV_NAME_LENGTH: Final = 128
"""Environment variable names."""
MAX_CONSTRAINT_LENGTH: Final = 1024
"""Each parameter or outcome constraint expression."""
MAX_MOUNT_LENGTH: Final = 1024
"""Each TorchX mount string."""
MAX_CHOICE_STRING_LENGTH: Final = 256
"""Each string value of a choice or fixed parameter (it is passed on every trial's command line)."""
MAX_K8S_NAME_LENGTH: Final = 253
"""Kubernetes object names (ServiceAccount, PersistentVolumeClaim, Secret): DNS subdomains."""
MAX_LABEL_KEY_LENGTH: Final = 317
"""Label and toleration keys: a 253-character prefix, "/", a 63-character name."""
MAX_LABEL_VALUE_LENGTH: Final = 63
"""Label and toleration values."""
MAX_QUANTITY_LENGTH: Final = 64
"""Resource quantities ("500m", "4Gi")."""
MAX_DESCRIPTION_LENGTH: Final = 64
"""Short enumerated-ish strings (a Secret key, a metric reduce)."""

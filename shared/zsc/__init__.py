"""zsc: data-free zero-shot image classification. This package is the shared library (runtime, codecs, models).

Importing it changes no environment variable and no logger: the hub's offline mode (``zsc.models.hub``), MLflow's
quieting (``zsc.tracking``) and CPU tuning (``zsc.runtime.tuning``) apply where zsc loads weights, creates its MLflow
client, or a process opts in.
"""

__version__ = "0.1.0"

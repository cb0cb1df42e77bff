"""recalign's Metaflow-facing layer: the flows' base class and mutator, the shared fan-out, the
report cards, reading finished runs, the ``recalign`` command line.

Unlike ``steps/``, this package may import Metaflow. It ships with the code package of remote runs.
"""

METAFLOW_PACKAGE_POLICY = "include"

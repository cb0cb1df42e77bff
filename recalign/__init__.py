"""recalign's Metaflow-facing helpers (flow decorators, the ``recalign`` command line).

Unlike ``steps/``, this package may import Metaflow. It ships with the code package of remote runs.
"""

METAFLOW_PACKAGE_POLICY = "include"

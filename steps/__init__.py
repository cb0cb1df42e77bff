"""recalign's library: every piece of real work, as plain tested functions.

Flows in ``flows/`` only wire these functions together. Nothing in this package imports
Metaflow, keeps global state or draws random numbers without an explicit seed.
"""

# Ship this package inside Metaflow's code package when a flow runs remotely.
METAFLOW_PACKAGE_POLICY = "include"

__version__ = "0.1.0"

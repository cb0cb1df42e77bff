"""News recommenders (NRMS, NRMSDocVec) on EB-NeRD: loaders, synthetic data, models, training,
inference and prediction dumps for the alignment flow.

TensorFlow is imported only by :mod:`steps.newsrec.layers`, :mod:`steps.newsrec.models` and
:mod:`steps.newsrec.train`; the data modules and :mod:`steps.newsrec.inference` (which runs a model
it is given) stay light.
"""

import os

# Before anything imports TensorFlow: Keras 3 on TensorFlow, and TensorFlow's C++ log at warnings.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

"""News recommenders (NRMS, NRMSDocVec) on EB-NeRD: loaders, synthetic data, models, training,
inference and prediction dumps for the alignment flow.

TensorFlow is imported only by :mod:`steps.newsrec.layers`, :mod:`steps.newsrec.models`,
:mod:`steps.newsrec.train` and :mod:`steps.newsrec.inference`; the data modules stay light.
"""

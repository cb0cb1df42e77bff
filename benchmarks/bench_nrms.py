"""Training and inference throughput of NRMS and NRMSDocVec at the paper's hyper-parameters.

    .venv/bin/python benchmarks/bench_nrms.py                       # defaults below
    .venv/bin/python benchmarks/bench_nrms.py --test-impressions 50000 --train-samples 4000

Data: synthetic EB-NeRD (same layout as the real files) with 768-dim document vectors and
30-token titles. Training: samples/s of ``train_model.fit`` on Wu et al. batches (batch 32,
npratio 4, history 20), after one warm-up epoch. Inference: impressions/s of the whole scoring
path of the dump step — encode every article once, every user once, then batched dot products.
Prints wall times, throughputs and peak RSS (``resource.getrusage``).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from steps.newsrec.config import NewsRecConfig  # noqa: E402
from steps.newsrec.ebnerd import load_split  # noqa: E402
from steps.newsrec.prepare import prepare_news_data, resolve_data_root  # noqa: E402
from steps.newsrec.sampler import sample_wu2019  # noqa: E402
from steps.newsrec.train import SampleBatches, build_for, configure_determinism, feature_table  # noqa: E402
from steps.newsrec.inference import score_split  # noqa: E402
from steps.seeding import rng_for  # noqa: E402

PAPER = {
    "nrms": {"word_emb_dim": 300, "head_num": 20, "head_dim": 20, "attention_hidden_dim": 200, "dropout": 0.2},
    "nrms_docvec": {"units": [512, 512, 512], "head_num": 16, "head_dim": 16, "attention_hidden_dim": 200, "dropout": 0.2, "l2": 1e-4},
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="nrms_docvec,nrms")
    ap.add_argument("--train-samples", type=int, default=3000)
    ap.add_argument("--test-impressions", type=int, default=20000)
    ap.add_argument("--articles", type=int, default=5000)
    ap.add_argument("--users", type=int, default=5000)
    args = ap.parse_args()
    models = args.models.split(",")
    cfg = NewsRecConfig.from_dict({
        "models": {m: PAPER[m] for m in models},
        "text": {"title_size": 30},
        "training": {"history_size": 20, "npratio": 4, "batch_size": 32, "learning_rate": 1e-4},
        "synthetic": {"n_articles": args.articles, "n_topics": 40, "n_users": args.users, "n_train_impressions": args.train_samples,
                      "n_validation_impressions": 100, "n_test_impressions": args.test_impressions, "n_ba_rows": 0,
                      "n_candidates": 100, "inview_max": 20, "title_words": 16, "vector_dim": 768},
    })
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        root, bundle, synthetic = resolve_data_root("", cfg, Path(tmp) / "data")
        data = prepare_news_data(root, bundle, synthetic, cfg, Path(tmp) / "prepared")
        print(f"data: {data.summary()}  ({time.perf_counter() - t:.1f} s)")
        test = load_split(data.splits["test"])
        train = load_split(data.splits["train"])
        for model in models:
            configure_determinism(cfg.seed)
            rec = build_for(data, model, cfg.models[model], cfg.training, cfg.seed)
            table = feature_table(data, model)
            hist = data.histories("train").matrix
            samples = sample_wu2019(train.offsets, train.inview_index, train.clicked, train.user_index, 4, rng_for(0, "bench"))
            batches = SampleBatches(samples, table, hist, 32, np.arange(len(samples)))
            rec.train_model.fit(batches, epochs=1, verbose=0, shuffle=False)  # warm-up (tracing)
            t = time.perf_counter()
            rec.train_model.fit(batches, epochs=1, verbose=0, shuffle=False)
            train_s = time.perf_counter() - t
            score_split(rec, table, data.histories("test").matrix, test)  # warm-up
            t = time.perf_counter()
            scores = score_split(rec, table, data.histories("test").matrix, test)
            infer_s = time.perf_counter() - t
            print(f"{model}: params {rec.train_model.count_params():,}; training {len(samples):,} samples in {train_s:.2f} s "
                  f"= {len(samples) / train_s:,.0f} samples/s; inference {test.n:,} impressions ({len(scores):,} scores, "
                  f"{len(table):,} articles, {len(np.unique(test.user_index)):,} users) in {infer_s:.2f} s = "
                  f"{test.n / infer_s:,.0f} impressions/s; peak RSS {peak_rss_mb():,.0f} MB")


if __name__ == "__main__":
    main()

"""The report cards of recalign's flows (Metaflow cards: Markdown, tables, figures).

Each ``<flow>_card`` fills ``current.card["report"]`` from the report step's artifacts; the figures
come as card images (:func:`images`), made before the export closes the matplotlib figures.
"""

from __future__ import annotations

import polars as pl
from metaflow import current
from metaflow.cards import Image, Markdown, Table

from steps.tables import table_rows



def seeds_block(c: list, cfg, by_seed, why: str, after: str = "") -> None:
    """A table over training seeds (mean, sd, Student-t interval), when the run trained several."""
    if by_seed is None:
        return
    seeds = cfg.seeds
    c.append(Markdown(f"### Over {len(seeds)} training seeds ({', '.join(map(str, seeds))}): mean, sd and the "
                      f"95 % Student-t interval of the mean ({why}). {after}".rstrip()))
    c.append(Table(table_rows(by_seed), headers=by_seed.columns))

def images(figures: dict) -> dict:
    """Card images of matplotlib figures, by file name: the PNG the export writes (drawn once,
    :func:`steps.figures.png_bytes`)."""
    from steps.figures import png_bytes

    return {name: Image(png_bytes(fig)) for name, fig in figures.items()}


ALIGN_FIGURES = (("Calibration (C_KL) and accuracy against λ", "calibration_vs_lambda.png"),
                 ("KL@N against λ", "kl_vs_lambda.png"), ("Category mix at the best λ", "category_mix.png"),
                 ("One user's genre mix before and after", "user_genre_mix.png"),
                 ("User-level KL: distribution over users (ECDF)", "user_kl_density.png"),
                 ("Accuracy against KL@N", "accuracy_vs_kl.png"))


def best_lambda_blocks(results: pl.DataFrame, best: pl.DataFrame, run_results: pl.DataFrame, spec, lists: bool,
                       heading: str = "###") -> list:
    """The best-λ comparison: each compared method's difference to λ = 0 with its interval and Holm
    mark (``run_results``: the whole run's table, whose p-values the correction counted)."""
    from steps.align.report import best_lambda_differences, uncertainty_legend

    table = best_lambda_differences(results, best)
    return [Markdown(f"{heading} Best λ per method: differences to λ = 0"),
            Markdown(uncertainty_legend(run_results, spec, lists)),
            Table(table_rows(table), headers=table.columns)]


def grid_columns(results: pl.DataFrame) -> list[str]:
    """The full grid's columns: keys and every metric with values (no sd, interval or test columns)."""
    from steps.align.evaluate import RESULT_COLUMNS
    from steps.align.lists import LIST_METRICS

    return [col for col in ("distribution", "method", "selection", "lambda", *RESULT_COLUMNS[4:], *LIST_METRICS)
            if col in results.columns and not col.endswith("_sd") and col != "n_repeats"
            and results[col].null_count() < results.height]


GRID_NOTE = "Intervals, differences to λ = 0 and p-values (raw and Holm) of every cell: `results.csv`."


def align_card_blocks(flow, figures: dict, run_id) -> list:
    """AlignFlow's card, in order: per dataset its summary, the best-λ comparison with intervals and
    the figures; then the full results grid of every dataset."""
    from steps.align.pipeline import dataset_line

    cfg = flow.cfg
    c: list = [Markdown(f"# AlignFlow `{run_id}` — {cfg.name}"),
               Markdown(f"Top-N = {cfg.top_n}, α = {cfg.alpha:g} (metrics), calibration α = {cfg.calibration_alpha:g}, "
                        f"repeats = {cfg.repeats}. Exported to `{flow.export_dir}`.")]
    flow.failed_cells_block(c)
    summaries = flow.data_summary if flow.several_datasets else {flow.results["dataset"][0]: flow.data_summary}
    for ds, summ in summaries.items():
        c.append(Markdown(f"## Dataset `{ds}`\n\n{dataset_line(summ)}"))
        for note in summ["notes"]:
            c.append(Markdown(f"**Note:** {note}"))
        sub = flow.results.filter(flow.results["dataset"] == ds)
        best = flow.best_lambda.filter(flow.best_lambda["dataset"] == ds)
        c += best_lambda_blocks(sub, best, flow.results, cfg.uncertainty, summ.get("kind") == "candidates")
        prefix = f"{ds}__" if flow.several_datasets else ""
        for title, name in ALIGN_FIGURES:
            if prefix + name in figures:
                c.append(Markdown(f"### {title}"))
                c.append(figures[prefix + name])
    c.append(Markdown(f"## Results: the full grid\n\n{GRID_NOTE}"))
    for ds in summaries:
        sub = flow.results.filter(flow.results["dataset"] == ds)
        cols = grid_columns(sub)
        if flow.several_datasets:
            c.append(Markdown(f"### Dataset `{ds}`"))
        c.append(Table(table_rows(sub, cols), headers=cols))
    return c


def align_card(flow, figures: dict) -> None:
    """AlignFlow: :func:`align_card_blocks` on the report card."""
    card = current.card["report"]
    for block in align_card_blocks(flow, figures, current.run_id):
        card.append(block)


NEWSREC_FIGURES = (("KL@N against λ", "kl_vs_lambda.png"), ("Category mix at the best λ", "category_mix.png"),
                   ("User-level KL: distribution over users (ECDF)", "user_kl_density.png"),
                   ("Accuracy against KL@N", "accuracy_vs_kl.png"))


def newsrec_card_blocks(flow, card_figures: dict, run_id) -> list:
    """NewsRecFlow's card, in order: the data, accuracy at the best epoch, training curves, per model
    the best-λ comparison with intervals and the figures; then every model's full results grid."""
    from steps.align.report import best_lambdas
    from steps.newsrec.report import training_curves_figure

    cfg = flow.cfg
    d = flow.data_summary
    c: list = [Markdown(f"# NewsRecFlow `{run_id}` — {cfg.name}"), Markdown(
        f"Data: `{d['bundle']}`{' (synthetic)' if d['synthetic'] else ''} — {d['articles']:,} articles, "
        f"{d['train_impressions']:,} train / {d['validation_impressions']:,} validation / {d['test_impressions']:,} test "
        f"impressions ({d['test_beyond_accuracy_rows']:,} beyond-accuracy rows). Exported to `{flow.export_dir}`."
    )]
    flow.failed_cells_block(c)
    c.append(Markdown("## Accuracy at the best epoch"))
    c.append(Table(table_rows(flow.train_metrics), headers=flow.train_metrics.columns))
    seeds_block(c, cfg, getattr(flow, "train_metrics_by_seed", None),
                "the spread over retrainings, which the bootstrap over impressions does not see")
    c.append(Markdown("## Training curves"))
    c.append(Image.from_matplotlib(training_curves_figure(flow.training_curves)))
    for model, figs in card_figures.items():
        c.append(Markdown(f"## Alignment of `{model}` (version `{flow.model_artifacts[model].version}`)"))
        res = flow.results.filter(pl.col("model") == model).drop("model")
        c += best_lambda_blocks(res, best_lambdas(res, cfg.align), flow.results, cfg.align.uncertainty, False)
        for title, name in NEWSREC_FIGURES:
            if name in figs:
                c.append(Markdown(f"### {title} — {model}"))
                c.append(figs[name])
    cols = ["distribution", "method", "selection", "lambda", "kl_at_n", "user_kl_mean", "coverage_at_n", "auc", "ndcg_at_10"]
    c.append(Markdown(f"## Results: the full grid\n\n{GRID_NOTE}"))
    for model in card_figures:
        c.append(Markdown(f"### `{model}`"))
        c.append(Table(table_rows(flow.results.filter(pl.col("model") == model), cols), headers=cols))
    return c


def newsrec_card(flow, card_figures: dict) -> None:
    """NewsRecFlow: :func:`newsrec_card_blocks` on the report card."""
    card = current.card["report"]
    for block in newsrec_card_blocks(flow, card_figures, current.run_id):
        card.append(block)


def tail_card(flow, card_images: dict) -> None:
    """TailFlow: each dataset, the change against EASE, the results, the weight diagnostics, figures."""
    from steps.tail.pipeline import RESULT_COLUMNS, SEED_METRICS
    from steps.tail.report import delta_table, weight_diagnostics_text

    cfg = flow.cfg
    c = current.card["report"]
    c.append(Markdown(f"# TailFlow `{current.run_id}` — {cfg.name}"))
    for name, d in flow.data_summary.items():
        c.append(Markdown(
            f"**{name}** ({d['source']}): {d['train_users']:,} training users, {d['items']:,} items, "
            f"{d['train_interactions']:,} training interactions; {d['valid_users_evaluable']:,} validation and "
            f"{d['test_users_evaluable']:,} test users evaluated; tail = {d['tail_items']:,} items holding "
            f"{d['tail_interaction_share']:.1%} of the training interactions."
        ))
    flow.failed_cells_block(c)
    c.append(Markdown("## Accuracy and coverage against EASE (test users)"))
    c.append(Markdown("\n".join(f"* {s}" for s in flow.statements) or "No EASE baseline in this run."))
    cols = RESULT_COLUMNS[:11]
    if len(cfg.seeds) > 1:
        cols = [*cols[:3], "seed", *cols[3:]]
    c.append(Markdown("## Results"))
    c.append(Table(table_rows(flow.results, cols), headers=cols))
    deltas = delta_table(flow.results)
    if not deltas.is_empty():
        spec = cfg.uncertainty
        c.append(Markdown(
            f"## Differences against EASE (test users, {spec.level:.0%} {spec.method} intervals, {spec.resamples} resamples)\n\n"
            "Paired on the same test users and resamples, against EASE of the same training seed; p adjusted by "
            "Holm over every test of the run. The results table (exported `results.csv`) holds every metric's "
            "`_lo`/`_hi`, `delta_*`, `p_*` and `p_*_holm`."))
        c.append(Table(table_rows(deltas), headers=deltas.columns))
    by_seed = getattr(flow, "results_by_seed", None)
    if by_seed is not None:
        seed_cols = ["dataset", "method", "split", "n_seeds"] + [f"{m}_{s}" for m in SEED_METRICS[:5] for s in ("mean", "sd")]
        c.append(Markdown(f"## Over training seeds {list(cfg.seeds)} (mean, sd; `results_by_seed.csv` has the t intervals)"))
        c.append(Table(table_rows(by_seed.filter(by_seed["split"] == "test"), seed_cols), headers=seed_cols))
    c.append(Markdown("## Item weights: adversarial, or a popularity prior?"))
    c.append(Markdown(weight_diagnostics_text(flow.results, flow.history)))
    for title, name in (("Accuracy against coverage", "accuracy_vs_coverage.png"),
                        ("Exposure by popularity bucket, before (EASE) and after promotion", "exposure_by_popularity.png"),
                        ("Item-level Recall@20 by popularity bucket", "item_recall_by_popularity.png")):
        c.append(Markdown(f"## {title}"))
        c.append(card_images[name])


def explain_card(flow, card_figures: dict) -> None:
    """ExplainFlow: the data and model, model quality, the explained users, figures, feature attributions."""
    from steps.explain.pipeline import describe_settings, feature_summary, model_quality_legend, model_quality_table
    from steps.uncertainty import is_interval_column

    cfg = flow.cfg
    c = current.card["report"]
    d = flow.data_summary
    c.append(Markdown(f"# ExplainFlow `{current.run_id}` — {cfg.name}"))
    c.append(Markdown(
        f"Data: {d['source']}: {d['users']:,} users, {d['items']:,} items, {d['interactions']:,} interactions. "
        f"GRU4Rec: embedding {flow.model_spec.emb_size}, hidden {flow.model_spec.hidden_size}, history "
        f"{cfg.history_max}. Top-{cfg.top_k}, baseline `{cfg.baseline_name}`, estimators {', '.join(cfg.estimators)}. "
        f"Exported to `{flow.export_dir}`. {describe_settings(cfg, d)}"
    ))
    flow.failed_cells_block(c, "Failed users (not explained)")
    c.append(Markdown("## Model quality (1 positive + sampled negatives; ties count against the positive)"))
    point = [col for col in flow.model_metrics.columns if not is_interval_column(col)]
    c.append(Table(table_rows(flow.model_metrics, point), headers=point))
    quality = model_quality_table(flow.model_metrics, cfg.ks)
    if quality.height:
        c.append(Markdown("### GRU4Rec against POP: intervals and paired differences"))
        c.append(Markdown(model_quality_legend(flow.model_metrics, cfg.uncertainty)))
        c.append(Table(table_rows(quality), headers=quality.columns))
    seeds_block(c, cfg, getattr(flow, "model_metrics_by_seed", None), "POP does not depend on the seed",
                f"The attributions below explain the model of the first seed, {getattr(flow, 'explained_seed', None)}.")
    c.append(Markdown("## Explained users (attributions sum to f(x) − f(baseline))"))
    cols = ["user_id", "estimator", "f_x", "f_baseline", "sum_attribution", "n_events", "n_events_kept", "seconds"]
    c.append(Table(table_rows(flow.efficiency, cols), headers=cols))
    for title, name in (("Attributions per user (events −1 … −L)", "attributions_by_user.png"),
                        ("Average |attribution| by recency", "recency_profile.png"),
                        ("TimeSHAP pruning horizon", "pruning_horizon.png")):
        c.append(Markdown(f"## {title}"))
        c.append(card_figures[name])
    if flow.feature_attributions.height:
        by_feature = feature_summary(flow.feature_attributions)
        c.append(Markdown("## Feature-level attributions (mean over users)"))
        c.append(Table(table_rows(by_feature), headers=by_feature.columns))

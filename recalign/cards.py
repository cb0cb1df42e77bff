"""The report cards of recalign's flows (Metaflow cards: Markdown, tables, figures).

Each ``<flow>_card`` fills ``current.card["report"]`` from the report step's artifacts; the figures
come as card images (:func:`images`), made before the export closes the matplotlib figures.
"""

from __future__ import annotations

import polars as pl
from metaflow import current
from metaflow.cards import Image, Markdown, Table

from steps.tables import table_rows


def images(figures: dict) -> dict:
    """Card images of matplotlib figures, by file name."""
    return {name: Image.from_matplotlib(fig) for name, fig in figures.items()}


def align_card(flow, figures: dict) -> None:
    """AlignFlow: per dataset, its summary, best λ per method, the figures and the results."""
    from steps.align.evaluate import RESULT_COLUMNS
    from steps.align.lists import LIST_METRICS
    from steps.align.pipeline import dataset_line

    cfg = flow.cfg
    c = current.card["report"]
    c.append(Markdown(f"# AlignFlow `{current.run_id}` — {cfg.name}"))
    c.append(Markdown(f"Top-N = {cfg.top_n}, α = {cfg.alpha:g} (metrics), calibration α = {cfg.calibration_alpha:g}, "
                      f"repeats = {cfg.repeats}. Exported to `{flow.export_dir}`."))
    flow.failed_cells_block(c)
    summaries = flow.data_summary if flow.several_datasets else {flow.results["dataset"][0]: flow.data_summary}
    for ds, summ in summaries.items():
        c.append(Markdown(f"## Dataset `{ds}`\n\n{dataset_line(summ)}"))
        for note in summ["notes"]:
            c.append(Markdown(f"**Note:** {note}"))
        sub = flow.results.filter(flow.results["dataset"] == ds)
        cols = [col for col in ("distribution", "method", "selection", "lambda", *RESULT_COLUMNS[4:], *LIST_METRICS)
                if col in sub.columns and not col.endswith("_sd") and col != "n_repeats" and sub[col].null_count() < sub.height]
        c.append(Markdown("### Best λ per method"))
        best = flow.best_lambda.filter(flow.best_lambda["dataset"] == ds)
        c.append(Table(table_rows(best), headers=best.columns))
        prefix = f"{ds}__" if flow.several_datasets else ""
        for title, name in (("Calibration (C_KL) and accuracy against λ", "calibration_vs_lambda.png"),
                            ("KL@N against λ", "kl_vs_lambda.png"), ("Category mix at the best λ", "category_mix.png"),
                            ("One user's genre mix before and after", "user_genre_mix.png"),
                            ("User-level KL density", "user_kl_density.png"), ("Accuracy against KL@N", "accuracy_vs_kl.png")):
            if prefix + name in figures:
                c.append(Markdown(f"### {title}"))
                c.append(figures[prefix + name])
        c.append(Markdown("### Results"))
        c.append(Table(table_rows(sub, cols), headers=cols))


def newsrec_card(flow, card_figures: dict) -> None:
    """NewsRecFlow: the data, accuracy at the best epoch, training curves, each model's alignment."""
    from steps.newsrec.report import training_curves_figure

    cfg = flow.cfg
    c = current.card["report"]
    d = flow.data_summary
    c.append(Markdown(f"# NewsRecFlow `{current.run_id}` — {cfg.name}"))
    c.append(Markdown(
        f"Data: `{d['bundle']}`{' (synthetic)' if d['synthetic'] else ''} — {d['articles']:,} articles, "
        f"{d['train_impressions']:,} train / {d['validation_impressions']:,} validation / {d['test_impressions']:,} test "
        f"impressions ({d['test_beyond_accuracy_rows']:,} beyond-accuracy rows). Exported to `{flow.export_dir}`."
    ))
    flow.failed_cells_block(c)
    c.append(Markdown("## Accuracy at the best epoch"))
    c.append(Table(table_rows(flow.train_metrics), headers=flow.train_metrics.columns))
    by_seed = getattr(flow, "train_metrics_by_seed", None)
    if by_seed is not None:
        c.append(Markdown(f"### Over {len(cfg.seeds)} training seeds ({', '.join(map(str, cfg.seeds))}): mean, sd and the "
                          "95 % Student-t interval of the mean (the spread over retrainings, which the bootstrap over "
                          "impressions does not see)"))
        c.append(Table(table_rows(by_seed), headers=by_seed.columns))
    c.append(Markdown("## Training curves"))
    c.append(Image.from_matplotlib(training_curves_figure(flow.training_curves)))
    cols = ["distribution", "method", "selection", "lambda", "kl_at_n", "user_kl_mean", "coverage_at_n", "auc", "ndcg_at_10"]
    for model, figs in card_figures.items():
        c.append(Markdown(f"## Alignment of `{model}` (version `{flow.model_artifacts[model].version}`)"))
        c.append(Table(table_rows(flow.results.filter(pl.col("model") == model), cols), headers=cols))
        for title, name in (("KL@N against λ", "kl_vs_lambda.png"), ("Category mix at the best λ", "category_mix.png"),
                            ("User-level KL density", "user_kl_density.png"), ("Accuracy against KL@N", "accuracy_vs_kl.png")):
            c.append(Markdown(f"### {title} — {model}"))
            c.append(figs[name])


def tail_card(flow, card_images: dict) -> None:
    """TailFlow: each dataset, the change against EASE, the results, the weight diagnostics, figures."""
    from steps.tail.pipeline import RESULT_COLUMNS
    from steps.tail.report import weight_diagnostics_text

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
    c.append(Markdown("## Results"))
    c.append(Table(table_rows(flow.results, cols), headers=cols))
    c.append(Markdown("## Item weights: adversarial, or a popularity prior?"))
    c.append(Markdown(weight_diagnostics_text(flow.results, flow.history)))
    for title, name in (("Accuracy against coverage", "accuracy_vs_coverage.png"),
                        ("Exposure by popularity bucket, before (EASE) and after promotion", "exposure_by_popularity.png"),
                        ("Item-level Recall@20 by popularity bucket", "item_recall_by_popularity.png")):
        c.append(Markdown(f"## {title}"))
        c.append(card_images[name])


def explain_card(flow, card_figures: dict) -> None:
    """ExplainFlow: the data and model, model quality, the explained users, figures, feature attributions."""
    from steps.explain.pipeline import describe_settings, feature_summary

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
    c.append(Table(table_rows(flow.model_metrics), headers=flow.model_metrics.columns))
    by_seed = getattr(flow, "model_metrics_by_seed", None)
    if by_seed is not None:
        c.append(Markdown(f"### Over {len(cfg.seeds)} training seeds ({', '.join(map(str, cfg.seeds))}): mean, sd and the "
                          "95 % Student-t interval of the mean (POP does not depend on the seed). The attributions "
                          f"below explain the model of the first seed, {flow.explained_seed}."))
        c.append(Table(table_rows(by_seed), headers=by_seed.columns))
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

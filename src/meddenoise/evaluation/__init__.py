"""Evaluation of trained runs and classical baselines on the same test images with the same fixed noise.

    from meddenoise.evaluation.runs import evaluate_run, evaluate_baseline
    evaluate_run("runs/unet")            # -> runs/unet/evaluation/test/{per_image.csv, summary.csv, ...}

The folder format is defined in `meddenoise.evaluation.files`; the report reads nothing else.
"""

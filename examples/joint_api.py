"""Detection + segmentation on one shared trunk, from Python (README: "Python API").

Runs in about a minute on a laptop CPU; without max_steps it trains the demo's full 2,400 steps.
"""
from multitask_edet import Experiment, build_dataset

exp = Experiment(
    "demo-shapes",                           # a shipped recipe (the demo's), changed below
    tasks=["det", "seg"],                    # both heads read the same BiFPN
    dataset="shapes",                        # built-in sample, generated on first use
    model={"name": "test-efficientdet",      # a named variant with parts changed:
           "neck": {"channels": 48, "repeats": 2, "max_level": 5}},
    seg={"channels": 32},                    # each task's own section: seg head on P2, det on P3-P5
    weighting="uncertainty",                 # learned task weights (Kendall et al. 2018)
    freeze=["backbone.body.conv_stem"],      # the stem stays as initialised ...
    lr_mult={"backbone": 0.5},               # ... and the rest of the backbone learns slower
    max_steps=30, output="runs/example-joint",
)
exp.train()                                  # checkpoints, metrics.jsonl, eval tables in runs/
metrics = exp.evaluate()                     # prints the AP and IoU tables
print(f"AP50 {metrics['det']['AP50']:.3f}  mIoU {metrics['seg']['mIoU']:.3f}")

image = build_dataset("shapes", split="val", annotations="det").load_sample(0)["image"]
pred = exp.predict([image])[0]               # original pixels: boxes xyxy, class names, mask
print(pred["det"]["boxes"][:3], pred["det"]["classes"][:3], pred["seg"].shape)

import numpy as np
import pandas as pd
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.pickle import PickleDataset

from cxr_spurious.io.masks import encode_rle
from cxr_spurious.pipelines.regression import create_pipeline


def test_regression_pipeline_runs(tmp_path):
    rng = np.random.default_rng(1)
    gt, ann, rows, hb = {}, {}, [], []
    for i in range(30):
        cxr = f"p{i}_study1_view1_frontal"
        m = np.zeros((40, 40), np.uint8)
        h, w = int(rng.integers(3, 20)), int(rng.integers(3, 20))
        m[5 : 5 + h, 5 : 5 + w] = 1
        gt[cxr] = {"Edema": encode_rle(m)}
        ann[cxr] = {
            "img_size": [40, 40],
            "Edema": [[[5, 5], [5 + w, 5], [5 + w, 5 + h]]] * int(rng.integers(1, 3)),
        }
        iou = 0.1 + h * w / 400 + rng.normal(0, 0.05)
        hb.append(
            {
                "image_id": cxr,
                "task": "Edema",
                "in_gt": True,
                "iou_tp": 0.9 - h * w / 800 + rng.normal(0, 0.05),
                "iou_full": np.nan,
                "hit": 1.0,
            }
        )
        rows.append(
            {
                "set": "erm.gradcam",
                "image_id": cxr,
                "task": "Edema",
                "prob": rng.random(),
                "in_gt": True,
                "iou_tp": iou,
                "iou_full": iou,
                "hit": float(rng.random() < 0.5 + h * w / 800),
            }
        )
    data = {
        "gt_segmentations": gt,
        "gt_annotations": ann,
        "localization_per_cxr": pd.DataFrame(rows),
        "localization_human_benchmark": pd.DataFrame(hb),
        "params:regression.cluster_robust": True,
        "params:regression.min_clusters": 30,
    }
    datasets = {k: MemoryDataset(v) for k, v in data.items()}
    datasets["regression_feature_results"] = PickleDataset(filepath=str(tmp_path / "res.pkl"))
    catalog = DataCatalog(datasets)
    SequentialRunner().run(create_pipeline(), catalog)
    res = catalog.load("regression_feature_results")
    pooled = res[
        (res["task"] == "pooled") & (res["outcome"] == "iou_tp") & (res["feature"] == "area_ratio")
    ].iloc[0]
    assert pooled.coef > 0 and pooled.bonferroni_significant
    # The benchmark's advantage shrinks as the finding grows (saliency IoU rises, benchmark IoU
    # falls).
    gap = res[
        (res["task"] == "pooled") & (res["outcome"] == "iou_gap") & (res["feature"] == "area_ratio")
    ].iloc[0]
    assert gap.coef < 0 and gap.bonferroni_significant and gap.n == 30

"""`python main.py export --out=DIR`: the model as ONNX, its card, and a numerical parity check.

DIR/model.onnx   NCHW float32 input, dynamic batch axis, L2 normalisation inside the graph (opset 18)
DIR/model.json   input card (native size, img_size, channels, mean, std, polarity rule), embedding_dim,
                 calibrated thresholds, validation FAR curve, checkpoint_sha256
DIR/parity.json  torch against onnxruntime on real images of the model's data set: minimum cosine,
                 1-NN labels, decisions at every stored threshold, batch 1 against batch N, and the
                 EER of the same pairs from both sets of embeddings
The files replace DIR's only when every check passes; otherwise DIR keeps what it held, the result
goes to DIR/parity_failed.json, and the command exits with status 1.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from utils.core.config import trained_params
from utils.core.errors import RunFailed
from utils.core.io import write_json
from utils.data.loading import load_splits
from utils.inference.recognizer import Recognizer, sha256
from utils.inference.reject import load_reject
from utils.inference.torch_backend import load_network, load_torch_embedder
from utils.scoring.metrics import metrics_from_histograms, score_statistics

N_QUERIES, N_GALLERY = 1000, 2000
MIN_COSINE, EER_TOLERANCE = 0.99999, 1e-5


def export_onnx(net: torch.nn.Module, card: dict, path: Path) -> None:
    x = torch.zeros(2, card["channels"], card["img_size"], card["img_size"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's business
        torch.onnx.export(net, (x,), str(path), dynamo=True, opset_version=18, input_names=["image"],
                          output_names=["embedding"], verbose=False, external_data=False,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=65536)}})


def pair_eer(q: np.ndarray, qy: np.ndarray, g: np.ndarray, gy: np.ndarray) -> float:
    st = score_statistics(torch.from_numpy(q), torch.from_numpy(qy), torch.from_numpy(g), torch.from_numpy(gy),
                          identification=False)
    return metrics_from_histograms(st["genuine_hist"], st["impostor_hist"])["eer"]


def parity(ref: Recognizer, ort: Recognizer, queries: np.ndarray, qy: np.ndarray, gallery: np.ndarray,
           gy: np.ndarray) -> dict:
    """Every check of the module docstring, on uint8 images (queries from the test set, gallery from training)."""
    t_q, t_g, o_q, o_g = ref.embed(queries), ref.embed(gallery), ort.embed(queries), ort.embed(gallery)
    cos = np.concatenate([(t_q * o_q).sum(1), (t_g * o_g).sum(1)])
    one_by_one = np.concatenate([ort.embed(queries[i:i + 1]) for i in range(min(len(queries), 200))])
    st, so = t_q @ t_g.T, o_q @ o_g.T
    noise = float(np.abs(st - so).max())
    decisions = {}
    for key, entry in ref.thresholds.items():
        t = entry["threshold"]
        differ = (st >= t) != (so >= t)
        # a pair can only flip where its score is within the numerical noise of the threshold
        decisions[key] = {"threshold": t, "differing": int(differ.sum()),
                          "differing_beyond_noise": int((differ & (np.abs(st - t) > noise)).sum())}
    eer_t, eer_o = pair_eer(t_q, qy, t_g, gy), pair_eer(o_q, qy, o_g, gy)
    checks = {
        "min_cosine": {"value": float(cos.min()), "pass": bool(cos.min() >= MIN_COSINE)},
        "nn_labels_equal": {"value": int((gy[st.argmax(1)] != gy[so.argmax(1)]).sum()), "pass":
                            bool((gy[st.argmax(1)] == gy[so.argmax(1)]).all())},
        "decisions": {"value": decisions, "pass": all(d["differing_beyond_noise"] == 0 for d in decisions.values())},
        "batch1_vs_batchN_max_abs": {"value": float(np.abs(one_by_one - o_q[:len(one_by_one)]).max()),
                                     "pass": bool(np.abs(one_by_one - o_q[:len(one_by_one)]).max() <= 1e-5)},
        "eer": {"torch": eer_t, "onnxruntime": eer_o, "pass": bool(abs(eer_t - eer_o) <= EER_TOLERANCE)},
    }
    return {"images": {"queries": len(queries), "gallery": len(gallery), "pairs": len(queries) * len(gallery),
                       "source": "test set (queries) and training split (gallery) of the model's data set"},
            "max_abs_score_difference": noise, "checks": checks, "pass": all(c["pass"] for c in checks.values())}


def export(ckpt: Path, out: Path, data_root: str) -> dict:
    """Export the checkpoint to `out`; returns parity.json's dict. RunFailed when a check fails."""
    net, state = load_network(ckpt)
    p = state["params"]
    splits, _ = load_splits(trained_params(p, data_root=data_root, use_tqdm=False))
    queries, qy = splits.test_x[:N_QUERIES].numpy(), splits.test_y[:N_QUERIES].numpy()
    gallery, gy = splits.train_x[:N_GALLERY].numpy(), splits.train_y[:N_GALLERY].numpy()
    card = {"format": "arcface-mnist-export-1", "model_name": p["model_name"], "loss_fuc_type": p["loss_fuc_type"],
            "embedding_dim": p["embedding_dim"], "input": state["input"], "output": "embedding: L2-normalised",
            "polarity_rule": "invert an image whose border/centre contrast disagrees with input.polarity "
                             "(utils/data/images.py); 'none': never",
            "normalise_rule": "input.normalise 'mnist': grey = luminance; paper = median of the outer 1/8 "
                              "frame; ink = paper - grey where paper >= 0.5 (dark ink) else grey - paper, "
                              "clipped at 0, divided by its 99th percentile, clipped to 1; pixels whose "
                              "local mean (window max(3, side/100), odd) or own value is below 0.25 and "
                              "separate pieces under 2 % of the largest are dropped; the ink's box is "
                              "resized (Lanczos down, bicubic up) to 20/28 of native_size on its longer "
                              "side and placed with its centre of mass at pixel (native_size/2, "
                              "native_size/2); 'mnist_stroke': as 'mnist', the pen first made MNIST's "
                              "width: the box scaled to 80 px on its longer side and padded by 10, its width "
                              "(2 x the mean distance to the paper on the ridges of the ink smoothed 5x5 and "
                              "cut at 0.3, less 3) brought to 9.8 px by grey dilation or erosion with a disk of "
                              "radius round((9.8 - width) / 2) (erosion only if 20 % of the ink remains); "
                              "'fit': the whole image fitted into the square. reject.normalise, where present, "
                              "replaces input.normalise (chosen on validation by python main.py wild)",
            "thresholds": state["thresholds"],
            "far_curve": state["far_curve"], "checkpoint_sha256": sha256(ckpt)}
    reject = load_reject(ckpt.parent, card["checkpoint_sha256"])  # "is it a digit?" (python main.py wild)
    if reject is not None:
        card["reject"] = reject
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        tmp = Path(tmp)
        export_onnx(net, state["input"], tmp / "model.onnx")
        write_json(tmp / "model.json", card)
        embedder, _ = load_torch_embedder(ckpt)
        ref = Recognizer(embedder, card["input"], card["thresholds"], card["far_curve"], card["checkpoint_sha256"],
                         reject=reject)
        result = parity(ref, Recognizer.from_onnx(tmp), queries, qy, gallery, gy)
        if not result["pass"]:
            write_json(out / "parity_failed.json", result)
            failed = [k for k, c in result["checks"].items() if not c["pass"]]
            raise RunFailed(f"ONNX parity failed ({', '.join(failed)}); see {out / 'parity_failed.json'}. The "
                            f"export was not written.")
        write_json(tmp / "parity.json", result)
        for name in ("model.onnx", "model.json", "parity.json"):
            shutil.move(str(tmp / name), str(out / name))
    return json.loads((out / "parity.json").read_text())

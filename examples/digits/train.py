"""Train a small CNN on scikit-learn's 8x8 digits and export it to ONNX.

Pure numpy (hand-written forward/backward, im2col convolutions, Adam), float64 math,
deterministic: fixed seeds, single-threaded BLAS, no timestamps in any output file.

    python examples/digits/train.py [--out DIR]

Writes into DIR (default: this folder):
    digits_cnn.onnx     opset 17, input ``input`` [1,1,8,8] float32, output ``logits`` [1,10]
    digits_test.npz     held-out test set: ``input`` (N,1,8,8) float32, ``label`` (N,) int64
    digits_train.npz    the training set: ``input`` (N,1,8,8) float32, ``label`` (N,) int64
    digits_calib.npz    200 training images under ``input`` (for int8 calibration)
    metrics.json        {"test_accuracy", "train_samples", "test_samples"}

Architecture (NCHW):
    conv1 3x3 1->16 pad 1 -> bn1 -> relu1 -> conv2 3x3 16->32 pad 1 -> bn2 -> relu2
    -> pool 2x2 -> conv3 3x3 32->32 pad 1 -> bn3 -> relu3 -> gap -> flatten -> fc 32->10
"""

from __future__ import annotations

import argparse
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

SEED = 0
EPOCHS = 30
BATCH = 32
LR = 2e-3
WEIGHT_DECAY = 1e-4
BN_EPS = 1e-5
CALIB_SAMPLES = 200
CHANNELS = (1, 16, 32, 32)
NUM_CLASSES = 10
OPSET = 17
IR_VERSION = 8


# --------------------------------------------------------------------------- layers


def conv3x3_forward(x, w, b):
    """3x3 convolution, stride 1, pad 1. x: (N,C,H,W), w: (O,C,3,3), b: (O,)."""
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = [xp[:, :, kh : kh + h, kw : kw + wd] for kh in range(3) for kw in range(3)]
    cols = np.stack(patches, axis=2)  # (N,C,9,H,W)
    cols = cols.transpose(0, 3, 4, 1, 2).reshape(n * h * wd, c * 9)
    out = cols @ w.reshape(w.shape[0], -1).T + b
    out = out.reshape(n, h, wd, -1).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out), (x.shape, cols)


def conv3x3_backward(dout, w, cache):
    (n, c, h, wd), cols = cache
    o = w.shape[0]
    d2 = dout.transpose(0, 2, 3, 1).reshape(-1, o)
    dw = (d2.T @ cols).reshape(w.shape)
    db = d2.sum(axis=0)
    dcols = (d2 @ w.reshape(o, -1)).reshape(n, h, wd, c, 9).transpose(0, 3, 4, 1, 2)
    dxp = np.zeros((n, c, h + 2, wd + 2))
    for k in range(9):
        kh, kw = divmod(k, 3)
        dxp[:, :, kh : kh + h, kw : kw + wd] += dcols[:, :, k]
    return dxp[:, :, 1:-1, 1:-1], dw, db


def bn_forward_train(x, gamma, beta):
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    inv = 1.0 / np.sqrt(var + BN_EPS)
    xhat = (x - mean[None, :, None, None]) * inv[None, :, None, None]
    out = gamma[None, :, None, None] * xhat + beta[None, :, None, None]
    return out, (xhat, inv), mean, var


def bn_forward_eval(x, gamma, beta, mean, var):
    inv = 1.0 / np.sqrt(var + BN_EPS)
    scale = (gamma * inv)[None, :, None, None]
    return (x - mean[None, :, None, None]) * scale + beta[None, :, None, None]


def bn_backward(dout, gamma, cache):
    xhat, inv = cache
    m = dout.shape[0] * dout.shape[2] * dout.shape[3]
    dgamma = (dout * xhat).sum(axis=(0, 2, 3))
    dbeta = dout.sum(axis=(0, 2, 3))
    dxhat = dout * gamma[None, :, None, None]
    s1 = dxhat.sum(axis=(0, 2, 3))[None, :, None, None]
    s2 = (dxhat * xhat).sum(axis=(0, 2, 3))[None, :, None, None]
    dx = (inv[None, :, None, None] / m) * (m * dxhat - s1 - xhat * s2)
    return dx, dgamma, dbeta


def maxpool2_forward(x):
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    blocks = blocks.reshape(n, c, h // 2, w // 2, 4)
    idx = blocks.argmax(axis=-1)
    out = np.take_along_axis(blocks, idx[..., None], axis=-1)[..., 0]
    return out, (x.shape, idx)


def maxpool2_backward(dout, cache):
    (n, c, h, w), idx = cache
    dblocks = np.zeros((n, c, h // 2, w // 2, 4))
    np.put_along_axis(dblocks, idx[..., None], dout[..., None], axis=-1)
    dx = dblocks.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5)
    return dx.reshape(n, c, h, w)


# --------------------------------------------------------------------------- model


def init_params(rng):
    p = {}
    for i in range(3):
        cin, cout = CHANNELS[i], CHANNELS[i + 1]
        fan_in = cin * 9
        p[f"conv{i + 1}.w"] = rng.normal(0.0, np.sqrt(2.0 / fan_in), (cout, cin, 3, 3))
        p[f"conv{i + 1}.b"] = np.zeros(cout)
        p[f"bn{i + 1}.gamma"] = np.ones(cout)
        p[f"bn{i + 1}.beta"] = np.zeros(cout)
    fan_in = CHANNELS[-1]
    bound = 1.0 / np.sqrt(fan_in)
    p["fc.w"] = rng.uniform(-bound, bound, (NUM_CLASSES, fan_in))
    p["fc.b"] = np.zeros(NUM_CLASSES)
    return p


def forward(p, x, stats=None):
    """Forward pass. ``stats=None``: training mode (batch statistics), returns
    (logits, caches, batch_stats). Otherwise ``stats`` maps i -> (mean, var): inference."""
    caches = {}
    batch_stats = {}
    h = x
    for i in (1, 2, 3):
        h, caches[f"conv{i}"] = conv3x3_forward(h, p[f"conv{i}.w"], p[f"conv{i}.b"])
        if stats is None:
            h, caches[f"bn{i}"], mean, var = bn_forward_train(h, p[f"bn{i}.gamma"], p[f"bn{i}.beta"])
            batch_stats[i] = (mean, var)
        else:
            h = bn_forward_eval(h, p[f"bn{i}.gamma"], p[f"bn{i}.beta"], *stats[i])
        caches[f"relu{i}"] = h > 0
        h = h * caches[f"relu{i}"]
        if i == 2:
            h, caches["pool"] = maxpool2_forward(h)
    caches["gap_shape"] = h.shape
    feat = h.mean(axis=(2, 3))
    caches["feat"] = feat
    logits = feat @ p["fc.w"].T + p["fc.b"]
    return logits, caches, batch_stats


def backward(p, caches, dlogits):
    g = {}
    g["fc.w"] = dlogits.T @ caches["feat"]
    g["fc.b"] = dlogits.sum(axis=0)
    dfeat = dlogits @ p["fc.w"]
    n, c, h, w = caches["gap_shape"]
    dh = np.broadcast_to(dfeat[:, :, None, None] / (h * w), (n, c, h, w))
    for i in (3, 2, 1):
        if i == 2:
            dh = maxpool2_backward(dh, caches["pool"])
        dh = dh * caches[f"relu{i}"]
        dh, g[f"bn{i}.gamma"], g[f"bn{i}.beta"] = bn_backward(dh, p[f"bn{i}.gamma"], caches[f"bn{i}"])
        dh, g[f"conv{i}.w"], g[f"conv{i}.b"] = conv3x3_backward(dh, p[f"conv{i}.w"], caches[f"conv{i}"])
    return g


def softmax_xent(logits, y):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    prob = e / e.sum(axis=1, keepdims=True)
    n = logits.shape[0]
    loss = -np.log(prob[np.arange(n), y] + 1e-12).mean()
    dlogits = prob.copy()
    dlogits[np.arange(n), y] -= 1.0
    return loss, dlogits / n


def train(x_tr, y_tr, x_te, y_te, rng):
    p = init_params(rng)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(val) for k, val in p.items()}
    beta1, beta2, adam_eps = 0.9, 0.999, 1e-8
    n = x_tr.shape[0]
    steps_per_epoch = (n + BATCH - 1) // BATCH
    total = EPOCHS * steps_per_epoch
    t = 0
    for epoch in range(EPOCHS):
        order = rng.permutation(n)
        losses = []
        for s in range(steps_per_epoch):
            idx = order[s * BATCH : (s + 1) * BATCH]
            if idx.size < 2:  # batch statistics need at least two samples
                continue
            xb = augment(x_tr[idx], rng)
            logits, caches, _ = forward(p, xb)
            loss, dlogits = softmax_xent(logits, y_tr[idx])
            losses.append(loss)
            grads = backward(p, caches, dlogits)
            t += 1
            lr = LR * 0.5 * (1.0 + np.cos(np.pi * t / total))  # cosine decay
            for k in p:
                gk = grads[k]
                if k.endswith(".w"):
                    gk = gk + WEIGHT_DECAY * p[k]
                m[k] = beta1 * m[k] + (1 - beta1) * gk
                v[k] = beta2 * v[k] + (1 - beta2) * gk * gk
                mhat = m[k] / (1 - beta1**t)
                vhat = v[k] / (1 - beta2**t)
                p[k] = p[k] - lr * mhat / (np.sqrt(vhat) + adam_eps)
        if (epoch + 1) % 5 == 0 or epoch == 0:
            stats = bn_statistics(p, x_tr)
            acc = accuracy(p, stats, x_te, y_te)
            print(f"epoch {epoch + 1:3d}  loss {np.mean(losses):.4f}  test acc {acc:.4f}")
    return p


def augment(x, rng):
    """Random shifts of up to one pixel (zero fill)."""
    n = x.shape[0]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    dy = rng.integers(0, 3, n)
    dx = rng.integers(0, 3, n)
    out = np.empty_like(x)
    for i in range(n):
        out[i] = xp[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
    return out


def bn_statistics(p, x):
    """Population BN statistics over the whole training set (a full-batch train-mode pass:
    every layer's statistics are computed on inputs normalized with the earlier ones)."""
    _, _, batch_stats = forward(p, x)
    return batch_stats


def predict(p, stats, x):
    logits, _, _ = forward(p, x, stats)
    return logits


def accuracy(p, stats, x, y):
    return float((predict(p, stats, x).argmax(axis=1) == y).mean())


# --------------------------------------------------------------------------- export


def export_onnx(p, stats, path: Path):
    f32 = np.float32
    inits = []
    nodes = []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=f32), name))
        return name

    cur = "input"
    for i in (1, 2, 3):
        w = init(f"conv{i}.weight", p[f"conv{i}.w"])
        b = init(f"conv{i}.bias", p[f"conv{i}.b"])
        nodes.append(
            helper.make_node(
                "Conv",
                [cur, w, b],
                [f"conv{i}_out"],
                name=f"conv{i}",
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[1, 1],
                dilations=[1, 1],
                group=1,
            )
        )
        mean, var = stats[i]
        bn_inputs = [
            f"conv{i}_out",
            init(f"bn{i}.scale", p[f"bn{i}.gamma"]),
            init(f"bn{i}.bias", p[f"bn{i}.beta"]),
            init(f"bn{i}.mean", mean),
            init(f"bn{i}.var", var),
        ]
        nodes.append(
            helper.make_node("BatchNormalization", bn_inputs, [f"bn{i}_out"], name=f"bn{i}", epsilon=BN_EPS)
        )
        nodes.append(helper.make_node("Relu", [f"bn{i}_out"], [f"relu{i}_out"], name=f"relu{i}"))
        cur = f"relu{i}_out"
        if i == 2:
            nodes.append(
                helper.make_node(
                    "MaxPool",
                    [cur],
                    ["pool_out"],
                    name="pool",
                    kernel_shape=[2, 2],
                    strides=[2, 2],
                )
            )
            cur = "pool_out"
    nodes.append(helper.make_node("GlobalAveragePool", [cur], ["gap_out"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap_out"], ["flatten_out"], name="flatten", axis=1))
    fc_w = init("fc.weight", p["fc.w"])
    fc_b = init("fc.bias", p["fc.b"])
    nodes.append(
        helper.make_node(
            "Gemm",
            ["flatten_out", fc_w, fc_b],
            ["logits"],
            name="fc",
            transB=1,
            alpha=1.0,
            beta=1.0,
        )
    )
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, NUM_CLASSES])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgec-examples-digits",
        producer_version="1",
        doc_string="Small CNN trained on sklearn load_digits (8x8, pixels scaled to [0,1]).",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString())


def save_npz(path: Path, **arrays):
    """np.savez without zip timestamps, so the file is byte-deterministic."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def ort_accuracy(model_path: Path, x, y):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    logits = np.concatenate([sess.run(["logits"], {"input": x[i : i + 1]})[0] for i in range(len(x))])
    return float((logits.argmax(axis=1) == y).mean()), logits


# --------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]  # (N,1,8,8) in [0,1]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    print(f"train {len(x_tr)}  test {len(x_te)}")

    rng = np.random.default_rng(SEED)
    with threadpool_limits(limits=1):  # single-threaded BLAS: bitwise reproducible sums
        p = train(x_tr.astype(np.float64), y_tr, x_te.astype(np.float64), y_te, rng)
        stats = bn_statistics(p, x_tr.astype(np.float64))
        # the numpy reference evaluates with the float32-rounded weights that get exported
        p32 = {k: v.astype(np.float32).astype(np.float64) for k, v in p.items()}
        s32 = {
            i: (m.astype(np.float32).astype(np.float64), v.astype(np.float32).astype(np.float64))
            for i, (m, v) in stats.items()
        }
        np_logits = predict(p32, s32, x_te.astype(np.float64))
    np_acc = float((np_logits.argmax(axis=1) == y_te).mean())

    onnx_path = out / "digits_cnn.onnx"
    export_onnx(p, stats, onnx_path)
    ort_acc, ort_logits = ort_accuracy(onnx_path, x_te, y_te)
    max_diff = float(np.abs(ort_logits - np_logits).max())
    print(f"numpy test accuracy {np_acc:.4f}  onnxruntime test accuracy {ort_acc:.4f}")
    print(f"max |logit diff| numpy vs onnxruntime: {max_diff:.2e}")
    if ort_acc != np_acc or max_diff > 1e-3:
        raise SystemExit("onnxruntime output does not match the numpy model")

    save_npz(out / "digits_test.npz", input=x_te, label=y_te)
    save_npz(out / "digits_train.npz", input=x_tr, label=y_tr)
    calib_idx = np.random.default_rng(SEED + 1).choice(len(x_tr), CALIB_SAMPLES, replace=False)
    save_npz(out / "digits_calib.npz", input=x_tr[np.sort(calib_idx)])
    metrics = {
        "test_accuracy": round(ort_acc, 6),
        "train_samples": len(x_tr),
        "test_samples": len(x_te),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"test accuracy (onnxruntime): {ort_acc:.4f}")
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size} bytes) in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()

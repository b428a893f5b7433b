"""Independent float64 NumPy references, written from the formulas with explicit loops.

Nothing here imports mars_jax: a shared bug cannot hide in a shared helper.
"""

import math

import numpy as np


def logsumexp(values) -> float:
    values = np.asarray(values, np.float64)
    top = values.max()
    return float(top + math.log(np.exp(values - top).sum()))


def cosine(a, b, eps=1e-12) -> float:
    return float(np.dot(a, b) / (max(np.linalg.norm(a), eps) * max(np.linalg.norm(b), eps)))


def valid_patches(shape, valid=None):
    """The (image, patch) pairs of valid patches, in grid order, and the images that have one."""
    b, n = shape[:2]
    patches = [(i, j) for i in range(b) for j in range(n) if valid is None or valid[i][j]]
    images = sorted({i for i, _ in patches})
    return patches, images


def cgcl(zr, zs, tau_p, tau_g, tau_c, alpha=1.0, beta=1.0, gamma=1.0, valid=None):
    """docs/architecture.md's L_patch, L_global, L_cross, one log-softmax at a time.

    valid: optional [B, N] patch mask: only valid patches are queries or keys, image
    embeddings average the valid patches, images without one are left out; empty means are 0.
    """
    zr, zs = np.asarray(zr, np.float64), np.asarray(zs, np.float64)
    patches, images = valid_patches(zr.shape, valid)
    patch = 0.0
    for i, j in patches:
        logits = [cosine(zr[i, j], zs[k, m]) / tau_p for k, m in patches]
        patch -= cosine(zr[i, j], zs[i, j]) / tau_p - logsumexp(logits)
    patch /= max(len(patches), 1)

    g_r = {i: np.mean([zr[k, m] for k, m in patches if k == i], axis=0) for i in images}
    g_s = {i: np.mean([zs[k, m] for k, m in patches if k == i], axis=0) for i in images}
    global_ = 0.0
    for i in images:
        logits = [cosine(g_r[i], g_s[k]) / tau_g for k in images]
        global_ -= cosine(g_r[i], g_s[i]) / tau_g - logsumexp(logits)
    global_ /= max(len(images), 1)

    cross = 0.0
    for i, j in patches:
        logits = [cosine(zr[i, j], g_s[k]) / tau_c for k in images]
        cross -= cosine(zr[i, j], g_s[i]) / tau_c - logsumexp(logits)
        logits = [cosine(zs[i, j], g_r[k]) / tau_c for k in images]
        cross -= cosine(zs[i, j], g_r[i]) / tau_c - logsumexp(logits)
    cross /= 2 * max(len(patches), 1)
    total = alpha * patch + beta * global_ + gamma * cross
    return total, {"patch": patch, "global": global_, "cross": cross}


def mas(zr, zs, valid=None):
    """Mean cosine of co-located pairs minus mean cosine of all other RGB/SAR pairs (of the
    valid patches; 0 with fewer than 2)."""
    zr, zs = np.asarray(zr, np.float64), np.asarray(zs, np.float64)
    patches, _ = valid_patches(zr.shape, valid)
    if valid is not None and len(patches) < 2:
        return 0.0
    matched, other = [], []
    for p in patches:
        for q in patches:
            (matched if p == q else other).append(cosine(zr[p], zs[q]))
    return float(np.mean(matched) - np.mean(other))


def layer_norm(x, scale, bias, eps=1e-6):
    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def attention(x, p):
    """x: [T, D] one sequence; p: qkv_kernel [D,3,H,Dh], qkv_bias [3,H,Dh], out_kernel [H,Dh,D],
    out_bias [D]. Softmax attention per head, written out."""
    t, _ = x.shape
    _, _, heads, head_dim = p["qkv_kernel"].shape
    qkv = np.einsum("td,dshk->tshk", x, p["qkv_kernel"]) + p["qkv_bias"]
    out = np.zeros((t, heads, head_dim))
    for h in range(heads):
        q, k, v = qkv[:, 0, h], qkv[:, 1, h], qkv[:, 2, h]
        for a in range(t):
            scores = np.array([q[a] @ k[c] / math.sqrt(head_dim) for c in range(t)])
            weights = np.exp(scores - scores.max())
            weights /= weights.sum()
            out[a, h] = weights @ v
    return np.einsum("thk,hkd->td", out, p["out_kernel"]) + p["out_bias"]


def mlp(x, p):
    return gelu(x @ p["fc1_kernel"] + p["fc1_bias"]) @ p["fc2_kernel"] + p["fc2_bias"]


def block(x, p, norm):
    """One transformer layer on one sequence [T, D]; pre- or post-norm."""
    ln1 = lambda y: layer_norm(y, p["ln1_scale"], p["ln1_bias"])
    ln2 = lambda y: layer_norm(y, p["ln2_scale"], p["ln2_bias"])
    if norm == "pre":
        x = x + attention(ln1(x), p)
        return x + mlp(ln2(x), p)
    x = ln1(attention(x, p) + x)
    return ln2(mlp(x, p) + x)


def mma(z_rgb, z_sar, layer_params, norm):
    """Odd layers (1st, 3rd, ...) within each modality, even layers over [Z_RGB; Z_SAR]."""
    b, n, _ = z_rgb.shape
    out_r, out_s = [], []
    for i in range(b):
        t = np.concatenate([z_rgb[i], z_sar[i]], axis=0).astype(np.float64)
        for index, p in enumerate(layer_params):
            if (index + 1) % 2 == 1:
                t = np.concatenate([block(t[:n], p, norm), block(t[n:], p, norm)], axis=0)
            else:
                t = block(t, p, norm)
        out_r.append(t[:n])
        out_s.append(t[n:])
    return np.stack(out_r), np.stack(out_s)


def sincos_2d(grid_h, grid_w, dim):
    """Row then column halves, each [sin(pos w_k) for k] + [cos(pos w_k) for k]."""
    quarter = dim // 4
    table = np.zeros((grid_h * grid_w, dim))
    for r in range(grid_h):
        for c in range(grid_w):
            for k in range(quarter):
                w = 10000.0 ** (-k / quarter)
                table[r * grid_w + c, k] = math.sin(r * w)
                table[r * grid_w + c, quarter + k] = math.cos(r * w)
                table[r * grid_w + c, 2 * quarter + k] = math.sin(c * w)
                table[r * grid_w + c, 3 * quarter + k] = math.cos(c * w)
    return table


def patch_term_hard(zr, zs, positions, tau_p, radius, weight, valid=None):
    """L_patch with hard negatives: the query's own-image patches within ``radius`` grid cells
    (excluding itself) count ``weight`` times in the denominator; the positive counts once.
    valid: optional [B, N] patch mask, as in ``cgcl``."""
    zr, zs = np.asarray(zr, np.float64), np.asarray(zs, np.float64)
    patches, _ = valid_patches(zr.shape, valid)
    loss = 0.0
    for i, j in patches:
        denominator = 0.0
        for k, m in patches:
            dist = math.dist(positions[i][j], positions[k][m])
            hard = k == i and m != j and dist <= radius
            w = weight if hard else 1.0
            denominator += w * math.exp(cosine(zr[i, j], zs[k, m]) / tau_p)
        loss -= cosine(zr[i, j], zs[i, j]) / tau_p - math.log(denominator)
    return loss / max(len(patches), 1)

"""Drawing chest-radiograph-like images: a patient's anatomy plus one visual sign per finding.

Everything is drawn as smooth fields over "body coordinates": ``u`` runs across the thorax (0 at the
midline, -1 / +1 at the chest walls; negative ``u`` is the image's left, the patient's right, as in a PA
film) and ``v`` runs down it (0 at the lung apices, ~1 at the costophrenic angles). A patient fixes the
mapping from pixels to body coordinates, the organ sizes and the lung texture; a follow-up study moves
that mapping by a pixel or so and draws fresh detector noise, so near-duplicates differ a little
everywhere, the way repeat films do, and the findings stay where they were.

Intensities are linear in [0, 1], bright = dense (bone, fluid, metal), dark = air (lungs). Each field is a
handful of whole-array numpy operations; a 128 x 128 image takes about a millisecond.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.floating[Any]]  # float32 in practice; numpy's stubs widen arithmetic results
#: per-finding parameters (side, size, position ...), all floats so they serialise and compare simply
FindingParams = dict[str, float]
TEXTURE_GRID = (12, 32)  # coarse and fine octaves of the lung-marking texture


@dataclass(frozen=True)
class Anatomy:
    """One patient's body: placement on the detector, organ sizes, texture and exposure."""

    cx: float  # midline, as a fraction of the image width
    top: float  # lung apex, as a fraction of the image height
    half_width: float  # thorax half-width, fraction of the width
    height: float  # apex-to-costophrenic-angle height, fraction of the height
    lung_a: float  # lung half-width in u
    heart_u: float  # heart centre (slightly to the patient's left, image right)
    heart_v: float
    heart_a: float  # horizontal semi-axis in u: the cardiothoracic ratio, since the thorax is 2 wide
    heart_b: float
    dome_rise: float  # how far each hemidiaphragm dome rises above its costophrenic angle
    right_dome: float  # the right hemidiaphragm sits a little higher (negative v offset)
    body_level: float
    lung_dark: float  # how much darker aerated lung is than soft tissue
    marking: float  # strength of the vascular markings
    rib_v0: float
    rib_step: float
    rib_curve: float
    rib_level: float
    bubble_u: float  # gastric air bubble under the left hemidiaphragm
    bubble_size: float
    contrast: float
    gamma: float
    noise: float  # detector noise sigma
    textures: tuple[F32, ...] = field(repr=False, compare=False)  # standard-normal grids, one per octave
    patches: F32 = field(repr=False, compare=False)  # a second texture for patchy opacities


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """A random patient; the ranges keep every landmark on the image at any size."""
    u = rng.uniform
    return Anatomy(
        cx=0.5 + rng.normal(0, 0.015),
        top=0.13 + rng.normal(0, 0.012),
        half_width=0.37 * u(0.92, 1.05),
        height=0.66 * u(0.93, 1.04),
        lung_a=u(0.39, 0.43),
        heart_u=u(0.07, 0.13),
        heart_v=u(0.70, 0.75),
        heart_a=u(0.38, 0.47),
        heart_b=u(0.19, 0.23),
        dome_rise=u(0.09, 0.14),
        right_dome=u(0.02, 0.05),
        body_level=u(0.42, 0.52),
        lung_dark=u(0.27, 0.34),
        marking=u(0.035, 0.055),
        rib_v0=u(-0.1, -0.05),
        rib_step=u(0.105, 0.118),
        rib_curve=u(0.22, 0.3),
        rib_level=u(0.06, 0.09),
        bubble_u=u(0.35, 0.55),
        bubble_size=u(0.06, 0.11),
        contrast=u(0.85, 1.15),
        gamma=u(0.85, 1.15),
        noise=u(0.008, 0.02),
        textures=tuple(rng.standard_normal((n, n)).astype(np.float32) for n in TEXTURE_GRID),
        patches=rng.standard_normal((10, 10)).astype(np.float32),
    )


@dataclass(frozen=True)
class Jitter:
    """How one study of a patient differs from another: position, scale, exposure (small)."""

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    brightness: float = 0.0


def draw_jitter(rng: np.random.Generator) -> Jitter:
    return Jitter(
        dx=rng.normal(0, 0.005),
        dy=rng.normal(0, 0.005),
        scale=1 + rng.normal(0, 0.006),
        brightness=rng.normal(0, 0.012),
    )


# --- finding parameters -------------------------------------------------------------------------------


def _side(rng: np.random.Generator) -> float:
    return float(rng.choice((-1.0, 1.0)))


def draw_finding_params(key: str, rng: np.random.Generator) -> FindingParams:
    """Where and how big a finding is for one patient (kept for all the patient's studies)."""
    u = rng.uniform
    if key == "devices":
        flags = rng.random(4) < (0.5, 0.6, 0.35, 0.5)
        if not flags.any():
            flags[rng.integers(4)] = True
        ett, cvc, ng, ecg = (float(f) for f in flags)
        return {
            "ett": ett,
            "cvc": cvc,
            "ng": ng,
            "ecg": ecg,
            "cvc_side": _side(rng),
            "ecg_seed": float(rng.integers(1 << 30)),
        }
    if key == "effusion":
        return {"side": float(rng.choice((-1.0, 1.0, 0.0), p=(0.4, 0.35, 0.25))), "height": u(0.22, 0.4)}
    if key == "cardiomegaly":
        return {"ctr": u(0.58, 0.68)}
    if key == "atelectasis":
        return {"side": _side(rng), "v": u(0.62, 0.84), "slope": u(-0.12, 0.12)}
    if key == "consolidation":
        return {"side": _side(rng), "zone": float(rng.integers(3)), "strength": u(0.8, 1.0)}
    if key == "edema":
        return {"severity": u(0.6, 1.0)}
    if key == "nodule":
        n = int(rng.choice((1, 2, 3), p=(0.6, 0.25, 0.15)))
        params: FindingParams = {"count": float(n)}
        for i in range(n):
            params |= {f"side{i}": _side(rng), f"du{i}": u(-0.55, 0.5), f"v{i}": u(0.25, 0.75), f"r{i}": u(0.045, 0.07)}
        return params
    if key == "hilar":
        return {"side": float(rng.choice((-1.0, 1.0, 0.0), p=(0.35, 0.35, 0.3))), "r": u(0.11, 0.15)}
    if key == "pneumothorax":
        return {"side": _side(rng), "depth": u(0.25, 0.4)}
    if key == "emphysema":
        return {"severity": u(0.7, 1.0)}
    if key == "mass":
        return {"side": _side(rng), "du": u(-0.4, 0.4), "v": u(0.3, 0.7), "r": u(0.13, 0.18), "lobe": u(0, 2 * np.pi)}
    if key == "granuloma":
        return {"side": _side(rng), "du": u(-0.5, 0.5), "v": u(0.25, 0.75)}
    if key == "fracture":
        return {"side": _side(rng), "rib": float(rng.integers(3, 7)), "at": u(0.5, 0.8), "step": u(0.06, 0.09)}
    if key == "scoliosis":
        return {"amp": _side(rng) * u(0.22, 0.33)}
    if key == "pneumoperitoneum":
        return {"size": u(0.8, 1.0)}
    raise KeyError(f"unknown finding {key!r}")


# --- drawing helpers ----------------------------------------------------------------------------------


def _sig(x: F32, width: float) -> F32:
    """A soft step: 0 well below 0, 1 well above; ``width`` in the units of ``x``."""
    return np.float32(0.5) + np.float32(0.5) * np.tanh(x * np.float32(0.5 / width))


def _blob(du: F32, dv: F32, r: float) -> F32:
    return np.exp(-(du * du + dv * dv) / (r * r)).astype(np.float32)


def _interp_matrix(coords: F32, n: int, lo: float, hi: float) -> F32:
    """Linear-interpolation weights ``[len(coords), n]`` of a grid of ``n`` nodes spanning [lo, hi]."""
    g = np.clip((coords - lo) / (hi - lo) * (n - 1), 0, n - 1.001)
    i = g.astype(np.intp)
    f = (g - i).astype(np.float32)
    weights = np.zeros((len(coords), n), dtype=np.float32)
    rows = np.arange(len(coords))
    weights[rows, i] = 1 - f
    weights[rows, i + 1] = f
    return weights


def _sample(grid: F32, u_axis: F32, v_axis: F32) -> F32:
    """Bilinear lookup of a texture grid spanning u in [-1.3, 1.3], v in [-0.4, 1.4].

    Body coordinates are separable (u depends on the column only, v on the row only), so the lookup is
    two small matrix products instead of a gather per pixel.
    """
    n_v, n_u = grid.shape
    return _interp_matrix(v_axis, n_v, -0.4, 1.4) @ grid @ _interp_matrix(u_axis, n_u, -1.3, 1.3).T


def _polyline(u: F32, v: F32, points: list[tuple[float, float]], aspect: float) -> F32:
    """Distance (in u units) from each pixel to a polyline given in body coordinates, all segments at once."""
    pts = np.asarray(points, dtype=np.float32) * np.asarray((1.0, aspect), dtype=np.float32)
    a, b = pts[:-1, :, None, None], pts[1:, :, None, None]
    x = np.stack((u, v * aspect))[None]  # [1, 2, H, W]
    ab = b - a
    t = np.clip(((x - a) * ab).sum(1, keepdims=True) / (ab * ab).sum(1, keepdims=True), 0, 1)
    d = x - a - t * ab
    return np.sqrt((d * d).sum(1).min(0)).astype(np.float32)


@dataclass
class _Canvas:
    """The coordinate grids of one render and the lung geometry findings refer to."""

    u: F32
    v: F32
    u_axis: F32  # u of each column (body coordinates are separable)
    v_axis: F32  # v of each row
    aspect: float  # v units per u unit on the image, so circles stay round
    lungs: dict[int, F32]  # side (-1 right lung, +1 left lung) -> soft mask
    du: dict[int, F32]  # side -> position across that lung (-1 medial ... +1 lateral)
    dome: dict[int, F32]  # side -> diaphragm level under that lung


def _canvas(anat: Anatomy, size: tuple[int, int], jitter: Jitter, emphysema: float) -> _Canvas:
    height, width = size
    y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
    x = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :]
    half_width, body_height = anat.half_width * jitter.scale, anat.height * jitter.scale
    u_axis = ((x - (anat.cx + jitter.dx)) / half_width).astype(np.float32)
    v_axis = ((y - (anat.top + jitter.dy)) / body_height).astype(np.float32)
    u = np.broadcast_to(u_axis, size).copy()
    v = np.broadcast_to(v_axis, size).copy()
    aspect = body_height * height / (half_width * width)
    lungs, dus, domes = {}, {}, {}
    for side in (-1, 1):
        centre = side * (0.14 + anat.lung_a)
        du = side * (u - centre) / anat.lung_a  # -1 medial, +1 lateral
        # The apex is rounded: the lung's width grows like sqrt(v) over its top fifth.
        width_at_v = np.sqrt(np.clip(v / 0.22, 0, 1))
        # ... and the thorax widens a little towards the bases.
        across = (width_at_v * (0.86 + 0.14 * np.clip(v, 0, 1)) - np.abs(du)) * anat.lung_a
        # Emphysema flattens and lowers the domes (hyperinflation).
        rise = anat.dome_rise * (1 - 0.7 * emphysema)
        dome = 1.0 + 0.06 * emphysema - (anat.right_dome if side < 0 else 0.0) - rise * (1 - du * du)
        down = (dome - v) * aspect
        lungs[side] = _sig(np.minimum(np.minimum(across, down), v * aspect), 0.012)
        dus[side], domes[side] = du.astype(np.float32), dome.astype(np.float32)
    return _Canvas(u, v, u_axis[0], v_axis[:, 0], aspect, lungs, dus, domes)


def _sides(side: float) -> list[int]:
    """The lungs a finding with this side involves (0: both)."""
    return [-1, 1] if side == 0 else [int(side)]


# --- the render ---------------------------------------------------------------------------------------


def render(
    anat: Anatomy,
    findings: Mapping[str, FindingParams],
    size: tuple[int, int] = (128, 128),
    jitter: Jitter | None = None,
    noise_rng: np.random.Generator | None = None,
) -> F32:
    """The image in [0, 1] (float32, ``size`` = (height, width)) of one study.

    Without ``noise_rng`` no detector noise is added: the tests compare renders of one patient with and
    without a finding, and want only the finding's sign in the difference.
    """
    jitter = jitter or Jitter()
    emph = findings["emphysema"]["severity"] if "emphysema" in findings else 0.0
    c = _canvas(anat, size, jitter, emph)
    u, v, k = c.u, c.v, c.aspect
    lung = np.maximum(c.lungs[-1], c.lungs[1])

    # Soft tissue: the body outline from the neck down, the mediastinum a little denser.
    body = _sig(1.22 - np.abs(u), 0.03) * _sig(v + 0.3, 0.03)
    image = 0.03 + anat.body_level * body
    scol = findings["scoliosis"]["amp"] if "scoliosis" in findings else 0.0
    spine_u = (scol * np.sin(np.pi * np.clip(v, 0, 1.1))).astype(np.float32)
    image += 0.10 * _sig(0.19 - np.abs(u - 0.02 - 0.4 * spine_u), 0.02) * _sig(v + 0.2, 0.04)

    # Heart: an ellipse over the medial lungs; its horizontal semi-axis is the cardiothoracic ratio.
    heart_a = findings["cardiomegaly"]["ctr"] if "cardiomegaly" in findings else anat.heart_a
    # An enlarged heart also sits lower and wider, like a real one: move its centre a bit outward.
    heart_u = anat.heart_u + 0.3 * (heart_a - anat.heart_a)
    ellipse = ((u - heart_u) / heart_a) ** 2 + ((v - anat.heart_v) / anat.heart_b) ** 2
    heart = _sig(1.0 - ellipse, 0.08) * _sig(c.dome[1] + 0.02 - v, 0.01)

    # Lung opacities add up in `opacity` (1 = airless) and give the soft-tissue density back.
    opacity = np.zeros(size, dtype=np.float32)
    marking_gain = np.ones(size, dtype=np.float32)
    darkness = anat.lung_dark * (1 + 0.35 * emph)
    _add_lung_findings(findings, c, anat, opacity, marking_gain)
    opacity = np.clip(opacity, -0.3, 1)  # negative: extra lucency (pneumothorax)

    texture = 0.6 * _sample(anat.textures[1], c.u_axis, c.v_axis) + 0.4 * _sample(anat.textures[0], c.u_axis, c.v_axis)
    hilum = np.minimum((u + 0.3) ** 2, (u - 0.3) ** 2) + ((v - 0.42) * k) ** 2
    markings = anat.marking * (1 - 0.6 * emph) * (0.5 + 0.8 * np.exp(-hilum / 0.12)) * texture
    image -= darkness * lung * (1 - 0.85 * heart) * (1 - opacity)
    image += markings * lung * (1 - heart) * marking_gain * (1 - opacity)
    image += 0.05 * heart

    # Bones: posterior ribs (drooping laterally), the spine and the clavicles.
    chest = _sig(1.1 - np.abs(u), 0.03) * _sig(c.dome[1] + 0.12 - v, 0.05)
    image += anat.rib_level * _ribs(anat, findings.get("fracture"), c) * chest
    vert = 0.85 + 0.15 * np.cos(2 * np.pi * v / 0.09)
    image += 0.07 * vert * _sig(0.065 - np.abs(u - spine_u), 0.012) * _sig(v + 0.3, 0.03) * _sig(1.3 - v, 0.03)
    au = np.abs(u)
    clavicle = np.exp(-((((v - 0.03 + 0.14 * (au - 0.12)) * k) / 0.03) ** 2)) * _sig(au - 0.12, 0.02)
    image += 0.07 * clavicle * _sig(0.92 - au, 0.03)

    # Gastric bubble under the left hemidiaphragm (normal air).
    bubble = _blob((u - anat.bubble_u) / 1.4, (v - (c.dome[1] + 0.1)) * k, anat.bubble_size)
    image -= 0.12 * bubble * body
    _add_overlays(findings, c, image)

    # Exposure: contrast around mid-grey, gamma, per-study brightness, then detector noise.
    image = np.clip(anat.contrast * (image - 0.3) + 0.3 + jitter.brightness, 0, 1) ** anat.gamma
    if noise_rng is not None:
        image = image + noise_rng.normal(0, anat.noise, size).astype(np.float32)
    return np.clip(image, 0, 1).astype(np.float32)


def _ribs(anat: Anatomy, fracture: FindingParams | None, c: _Canvas) -> F32:
    """Nine posterior ribs a side as Gaussian bands; a fractured one gets a gap, a step and some callus.

    The bands are evenly spaced along ``v - curve * u^2``, so each pixel only needs its nearest rib: one
    exponential for all of them instead of one per rib.
    """
    u, v = c.u, c.v
    count, width = 9, 0.022
    t = (v - anat.rib_v0 - anat.rib_curve * u * u) / anat.rib_step
    nearest = np.clip(np.rint(t), 0, count - 1)
    bands = np.exp(-((((t - nearest) * anat.rib_step) / width) ** 2))
    if fracture is None:
        return bands
    rib, side, at = int(fracture["rib"]), fracture["side"], fracture["at"]
    bands = bands * (nearest != rib)
    lateral = _sig(side * u - at, 0.01)  # the part of that rib beyond the break, on the broken side
    centre = anat.rib_v0 + anat.rib_step * rib + anat.rib_curve * u * u + fracture["step"] * lateral
    broken = np.exp(-(((v - centre) / width) ** 2))
    broken *= 1 - 0.95 * np.exp(-(((side * u - at) / 0.03) ** 2)) * (side * u > 0)  # the gap
    rib_v = anat.rib_v0 + anat.rib_step * rib + anat.rib_curve * at * at
    callus = _blob(u - side * (at + 0.05), (v - rib_v) * c.aspect, 0.06)
    return bands + broken + 1.5 * callus


def _add_lung_findings(
    findings: Mapping[str, FindingParams], c: _Canvas, anat: Anatomy, opacity: F32, marking_gain: F32
) -> None:
    """Opacities inside the lungs (in place); the caller turns opacity into density."""
    u, v, k = c.u, c.v, c.aspect
    if p := findings.get("effusion"):
        for side in _sides(p["side"]):
            lateral = np.clip((c.du[side] + 1) / 2, 0, 1)
            # The meniscus: the fluid climbs higher along the lateral chest wall.
            level = c.dome[side] - p["height"] * (0.45 + 0.55 * lateral * lateral)
            opacity += 0.95 * c.lungs[side] * _sig(v - level, 0.02)
    if p := findings.get("consolidation"):
        side = int(p["side"])
        lo, hi = ((0.15, 0.45), (0.35, 0.65), (0.55, 0.95))[int(p["zone"])]
        zone = c.lungs[side] * _sig(v - lo, 0.04) * _sig(hi - v, 0.04)
        patchy = _sig(_sample(anat.patches, c.u_axis, c.v_axis) + 0.3, 0.35)
        opacity += p["strength"] * zone * patchy
    if p := findings.get("atelectasis"):
        side = int(p["side"])
        line = p["v"] + p["slope"] * c.du[side]
        band = np.exp(-((((v - line) * k) / 0.03) ** 2)) * _sig(0.75 - np.abs(c.du[side]), 0.06)
        opacity += 0.8 * band * c.lungs[side]
    if p := findings.get("edema"):
        for side in (-1, 1):
            haze = np.exp(-(((u - side * 0.33) ** 2) / 0.09 + (((v - 0.5) * k) ** 2) / 0.25))
            opacity += 0.8 * p["severity"] * haze * c.lungs[side]
    if p := findings.get("hilar"):
        for side in _sides(p["side"]):
            opacity += 1.2 * _blob(u - side * 0.3, (v - 0.42) * k, p["r"])
    if p := findings.get("nodule"):
        for i in range(int(p["count"])):
            sign = p[f"side{i}"]
            centre_u = sign * (0.14 + anat.lung_a * (1 + p[f"du{i}"]))
            opacity += 0.85 * _blob(u - centre_u, (v - p[f"v{i}"]) * k, p[f"r{i}"])
    if p := findings.get("mass"):
        sign = p["side"]
        centre_u = sign * (0.14 + anat.lung_a * (1 + p["du"]))
        for j in range(3):  # lobulated: three overlapping lobes
            angle = p["lobe"] + j * 2.1
            du = u - centre_u - 0.45 * p["r"] * np.cos(angle)
            dv = (v - p["v"]) * k - 0.45 * p["r"] * np.sin(angle)
            opacity += 0.95 * _blob(du, dv, p["r"] * (0.8 + 0.1 * j))
    if p := findings.get("pneumothorax"):
        side = int(p["side"])
        lateral = np.clip((c.du[side] + 1) / 2, 0, 1)
        # The visceral pleural line: deeper laterally, where the lung falls away from the chest wall.
        line = p["depth"] * (0.55 + 0.45 * lateral)
        zone = c.lungs[side] * _sig(line - v, 0.008)
        marking_gain *= 1 - zone  # no lung markings beyond the line
        opacity -= 0.45 * zone  # and more lucent
        opacity += 0.8 * c.lungs[side] * np.exp(-((((v - line) * k) / 0.03) ** 2))


def _add_overlays(findings: Mapping[str, FindingParams], c: _Canvas, image: F32) -> None:
    """Things drawn on top of everything (in place): metal, calcium, free air."""
    u, v, k = c.u, c.v, c.aspect
    if p := findings.get("devices"):
        strokes: list[list[tuple[float, float]]] = []
        if p["ett"]:
            strokes += [[(dx, -0.45), (dx, 0.14)] for dx in (-0.03, 0.03)]
        if p["cvc"]:
            s = p["cvc_side"]
            strokes.append([(s * 0.75, -0.2), (s * 0.35, 0.0), (s * 0.1, 0.12), (0.03 * s, 0.3)])
        if p["ng"]:
            strokes.append([(0.01, -0.45), (0.03, 0.4), (0.1, 1.0), (0.4, 1.12)])
        for stroke in strokes:
            image += 0.45 * _sig(0.022 - _polyline(u, v, stroke, k), 0.008)
        if p["ecg"]:
            rng = np.random.default_rng(int(p["ecg_seed"]))
            for lu, lv in zip(rng.uniform(-0.9, 0.9, 3), rng.uniform(0.05, 0.9, 3), strict=True):
                ring = np.sqrt((u - lu) ** 2 + ((v - lv) * k) ** 2)
                image += 0.4 * np.exp(-(((ring - 0.06) / 0.015) ** 2))
    if p := findings.get("granuloma"):
        side = p["side"]
        centre_u = side * (0.14 + 0.41 * (1 + p["du"]))
        image += 0.8 * _blob(u - centre_u, (v - p["v"]) * k, 0.045)
    if p := findings.get("pneumoperitoneum"):
        # A lucent crescent of free air just under the right hemidiaphragm.
        below = (v - c.dome[-1] - 0.035) * k
        crescent = np.exp(-((below / 0.03) ** 2)) * _sig(0.8 - np.abs(c.du[-1]), 0.06)
        image -= 0.35 * p["size"] * crescent


def to_uint8(image: F32) -> NDArray[np.uint8]:
    return np.rint(image * 255).astype(np.uint8)


def body_coordinates(anat: Anatomy, size: tuple[int, int] = (128, 128)) -> tuple[F32, F32]:
    """``(u, v)`` of every pixel of a patient's first study: for locating regions (tests, audits)."""
    c = _canvas(anat, size, Jitter(), 0.0)
    return c.u, c.v

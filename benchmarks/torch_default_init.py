# torch's default nn.Linear init in a 10-layer ReLU MLP (width 256): measured activation variance per layer
import torch
import torch.nn as nn

import initdoctor

torch.set_num_threads(1)
for bias in (True, False):
    torch.manual_seed(0)
    layers = []
    for _ in range(10):
        layers += [nn.Linear(256, 256, bias=bias), nn.ReLU()]
    r = initdoctor.diagnose(nn.Sequential(*layers, nn.Linear(256, 10)), probe=True)
    v = [f.activation_var for f in r.layers[:10]]
    print(
        f"bias={bias}: std/Kaiming {r.layers[0].std_ratio:.3f}; Var[y] per layer "
        + " ".join(f"{x:.3g}" for x in v)
    )
    print("  ratios layer to layer: " + " ".join(f"{b / a:.3f}" for a, b in zip(v[:-1], v[1:], strict=True)))

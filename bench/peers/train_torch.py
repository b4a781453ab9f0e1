#!/usr/bin/env python3
"""PyTorch peer of bench/train.ts: the same 784-256-256-10 ReLU MLP, batch, optimiser
(AdamW, weight decay 0, lr 1e-4), loss (softmax cross-entropy) and adapters, trained on
the same kind of synthetic batches, timed the same way (samples over the wall time of the
updates), in float32 on the CPU with the same thread count.

Adapters, as lib/train does them:
  - base:       every nn.Linear trainable;
  - lora:       y = x W^T + b + (x A^T) B^T (r, scale 1, A Kaiming-uniform, B = 0), W, b frozen;
  - eigenlora:  y = x W^T + b + ((x V_A) alpha) beta^T U_B^T with V_A (in x K_A), U_B
                (out x K_B) frozen orthonormal columns, alpha (K_A x r), beta (K_B x r)
                trainable; K_A = min(k + augment, in), K_B = min(k + augment, out).

A long-lived process: one JSON object per line on stdin, one answer per line on stdout,
so that bench/train.ts can interleave its rounds with these ones.
  {"cmd": "info"}                  -> {"torch": version, "threads": n}
  {"cmd": "setup", "batch", "steps", "rank", "k", "augment", "seed"}
  {"cmd": "round", "name": "base" | "lora" | "eigenlora" | "eigenlorax"} -> {"samplesPerSecond": s}
  {"cmd": "quit"}
"""
import json
import math
import sys
import time

WIDTHS = [784, 256, 256, 10]
LR = 1e-4


def main():
    try:
        import torch
        import torch.nn.functional as F
    except Exception as e:  # noqa: BLE001 - any import failure means "no peer"
        print(json.dumps({"error": f"torch does not import: {e}"}), flush=True)
        return
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads())

    state = {}

    def orthonormal(rows, cols, gen):
        q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=gen))
        return q.contiguous()

    def build(name):
        s = state["settings"]
        gen = torch.Generator().manual_seed(s["seed"])
        base = []
        for i in range(len(WIDTHS) - 1):
            d_in, d_out = WIDTHS[i], WIDTHS[i + 1]
            bound = 1 / math.sqrt(d_in)
            w = (torch.rand(d_out, d_in, generator=gen) * 2 - 1) * bound
            b = (torch.rand(d_out, generator=gen) * 2 - 1) * bound
            base.append((w, b))
        params = []
        layers = []
        for w, b in base:
            d_out, d_in = w.shape
            if name == "base":
                w = w.clone().requires_grad_()
                b = b.clone().requires_grad_()
                params += [w, b]
                layers.append(lambda x, w=w, b=b: F.linear(x, w, b))
            elif name == "lora":
                r = s["rank"]
                a = ((torch.rand(r, d_in, generator=gen) * 2 - 1) / math.sqrt(d_in)).requires_grad_()
                bb = torch.zeros(d_out, r, requires_grad=True)
                params += [a, bb]
                layers.append(lambda x, w=w, b=b, a=a, bb=bb: F.linear(x, w, b) + (x @ a.t()) @ bb.t())
            else:
                extra = s["augment"] if name == "eigenlorax" else 0
                ka, kb = min(s["k"] + extra, d_in), min(s["k"] + extra, d_out)
                va, ub = orthonormal(d_in, ka, gen), orthonormal(d_out, kb, gen)
                r = s["rank"]
                alpha = ((torch.rand(ka, r, generator=gen) * 2 - 1) / math.sqrt(ka)).requires_grad_()
                beta = torch.zeros(kb, r, requires_grad=True)
                params += [alpha, beta]
                layers.append(lambda x, w=w, b=b, va=va, ub=ub, al=alpha, be=beta: F.linear(x, w, b) + (((x @ va) @ al) @ be.t()) @ ub.t())
        return layers, params

    def model_forward(layers, x):
        h = x
        for i, layer in enumerate(layers):
            h = layer(h)
            if i + 1 < len(layers):
                h = torch.relu(h)
        return h

    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg.get("cmd")
        try:
            if cmd == "info":
                reply = {"torch": torch.__version__, "threads": torch.get_num_threads()}
            elif cmd == "setup":
                state["settings"] = msg
                gen = torch.Generator().manual_seed(7)
                rows = msg["batch"] * msg["steps"]
                state["x"] = torch.rand(rows, WIDTHS[0], generator=gen)
                state["y"] = torch.randint(0, 10, (rows,), generator=gen)
                state["models"] = {}
                reply = {"ok": True}
            elif cmd == "round":
                name = msg["name"]
                layers, params = build(name)  # fresh parameters every round, as bench/train.ts
                opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
                s = state["settings"]
                batch, steps = s["batch"], s["steps"]
                perm = torch.randperm(batch * steps, generator=torch.Generator().manual_seed(1))
                start = time.perf_counter()
                for i in range(steps):
                    idx = perm[i * batch:(i + 1) * batch]
                    x, y = state["x"][idx], state["y"][idx]
                    opt.zero_grad(set_to_none=False)
                    loss = F.cross_entropy(model_forward(layers, x), y)
                    loss.backward()
                    opt.step()
                seconds = time.perf_counter() - start
                reply = {"samplesPerSecond": batch * steps / seconds}
            elif cmd == "quit":
                return
            else:
                reply = {"error": f"unknown command {cmd}"}
        except Exception as e:  # noqa: BLE001 - reported to the caller
            reply = {"error": repr(e)}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()

"""Gaussian random numbers by the Box-Muller transform (thesis example 1,
algorithms 4.4 and 4.5), with the LCG parameters of gcc.

Each rank writes its pairs to output/output.txt. Pass --parameters COUNT
for the number of pairs per rank (the thesis used 10 000 000; default 1000).
The seed mixes the clock with the rank so ranks differ.
"""
import os
import sys
import time
from math import cos, log, pi, sin, sqrt


class GeradorAleatorio:
    def __init__(self, salt=0):
        self.x = 0
        self.salt = salt

    def gerar_semente(self):
        t = time.time()
        return int((t - int(t)) * 1000000000) + self.salt

    def gerar_uniforme(self, modulo=(2**31), mult=1103515245, c=12345, seed=123456789):
        if self.x == 0:
            self.x = (seed * mult + c) % modulo
        else:
            self.x = (self.x * mult + c) % modulo
        return self.x / modulo

    def gerar_normal(self):
        U1 = self.gerar_uniforme(seed=self.gerar_semente())
        U2 = self.gerar_uniforme(seed=self.gerar_semente())
        U1 = U1 or 1e-12
        Z0 = sqrt(-2 * log(U1)) * cos(2 * pi * U2)
        Z1 = sqrt(-2 * log(U1)) * sin(2 * pi * U2)
        return Z0, Z1


def header(argv):
    """Reads PESC's header (--name value ... --parameters p1 p2 ...)."""
    opts, params, i = {}, [], 0
    while i < len(argv):
        if argv[i] == "--parameters":
            params = argv[i + 1:]
            break
        if argv[i].startswith("--") and i + 1 < len(argv):
            opts[argv[i][2:]] = argv[i + 1]
            i += 2
        else:
            i += 1
    return opts, params


if __name__ == "__main__":
    opts, params = header(sys.argv[1:])
    rank = int(opts.get("rank", 0))
    out_dir = opts.get("output_dir", "output")
    count = int(params[0]) if params else 1000
    rn = GeradorAleatorio(salt=rank * 7919)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "output.txt"), "w") as out:
        for _ in range(count):
            v1, v2 = rn.gerar_normal()
            out.write(f"{v1}, {v2}\n")
    print(f"rank {rank}: {2 * count} normal numbers")

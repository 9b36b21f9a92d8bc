"""Trapezoid integral of sin(x)^2 on [-1, 1], split by rank.

The thesis's example 2 (section 4.4.2, algorithms 4.6-4.8): each rank takes
its own slice of "precision" values (numbers of points), 100 000 wide as in
the thesis, and prints one line per precision. PESC hands every run its
rank through the header. Pure Python here (the thesis used numpy) so the
example runs on any node with python3; pass --parameters STEP to change the
stride between precisions (the thesis used 1000; the default 20000 keeps a
run under a second).
"""
import argparse
import os
import time
from math import sin


def funcao(x):
    return sin(x) ** 2


def linspace(a, b, n):
    if n < 2:
        return [a]
    step = (b - a) / (n - 1)
    return [a + i * step for i in range(n)]


def integrar(funcao, lim_inferior, lim_superior, precisao):
    integral = soma_area_superior = soma_area_inferior = 0.0
    if lim_inferior > lim_superior:
        raise ValueError("O limite inferior deve ser menor que o superior")
    pontos = linspace(lim_inferior, lim_superior, int(precisao))
    for index in range(len(pontos) - 1):
        delta = pontos[index + 1] - pontos[index]
        y_1 = funcao(pontos[index])
        y_2 = funcao(pontos[index + 1])
        integral += (y_2 + y_1) * delta / 2
        soma_area_inferior += y_1 * delta
        soma_area_superior += y_2 * delta
    return integral, soma_area_superior - soma_area_inferior


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--app_dir", "-a", default=f"{os.getcwd()}/")
    parser.add_argument("--checkpoint_dir", "-c", default=f"{os.getcwd()}/checkpoint")
    parser.add_argument("--output_dir", "-o", default=f"{os.getcwd()}/output")
    parser.add_argument("--rank", "-r", type=int, default=0)
    parser.add_argument("--world_size", "-w", type=int, default=1)
    parser.add_argument("--master_addr", "-d", default="127.0.0.1")
    parser.add_argument("--master_port", "-t", type=int, default=9000)
    parser.add_argument("--parameters", "-p", nargs="*", default=[])
    args = parser.parse_args()
    passo = int(args.parameters[0]) if args.parameters else 20000

    limite_inferior = args.rank * 100000
    limite_superior = limite_inferior + 100000
    inicio = time.time()
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "output.txt"), "w") as out:
        for indice, precisao in enumerate(range(max(limite_inferior, 2), limite_superior, passo)):
            resultado, acuracia = integrar(funcao, -1, 1, precisao=precisao)
            linha = f"{args.rank}, {indice}, {precisao}, {resultado}, {acuracia}"
            print(linha)
            out.write(linha + "\n")
    print(f"Tempo de execução: {time.time() - inicio}segs")

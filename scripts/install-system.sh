#!/usr/bin/env bash
# Install the system parts bornfield needs, only when they are missing:
# Quantum ESPRESSO (pw.x, ph.x, ld1.x) with its pseudopotential data,
# Open MPI (the MPI Debian's QE is built against) and the serial OpenBLAS. Idempotent; needs root
# (or sudo) on Debian/Ubuntu. Cluster users without root: load the QE and MPI
# modules instead and set dft.executables in the config (see README).
set -euo pipefail

need=()
for exe in pw.x ph.x ld1.x; do
  command -v "$exe" >/dev/null 2>&1 || need+=(quantum-espresso)
done
command -v mpirun >/dev/null 2>&1 || need+=(openmpi-bin)
ls /usr/share/espresso/pseudo/Li.pbesol-s-kjpaw_psl.*.UPF >/dev/null 2>&1 || need+=(quantum-espresso-data)
# Debian's QE links libblas.so.3, which defaults to the reference BLAS; the serial OpenBLAS
# takes over that alternative when installed: ph.x 1.45x, pw.x 1.31x faster on 16 atoms with
# identical results (benchmarks/results/dft_convergence.json, "BLAS" records)
dpkg -s libopenblas0-serial >/dev/null 2>&1 || need+=(libopenblas0-serial)
for extra in "$@"; do
  dpkg -s "$extra" >/dev/null 2>&1 || need+=("$extra")
done

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "install-system: missing ${need[*]} and not root: install them or load the modules (README, 'On a SLURM cluster')" >&2
    exit 1
  fi
else
  SUDO=
fi
echo "install-system: installing ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null

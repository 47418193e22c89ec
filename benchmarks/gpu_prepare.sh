#!/usr/bin/env bash
# Fill .gpu/ (git-ignored) with what benchmarks/gpu_check.sh needs on a lent GPU machine: its image holds Python 3.12
# with torch, numpy, scipy, matplotlib, pandas, pyarrow and rich, and it reaches no network. So: Fashion-MNIST's four
# IDX files, and wheels (CPython 3.12, manylinux x86-64) of PyHessian, MLflow, Optuna and what they need beyond the
# image. The device tool carries at most 64 MiB in all: the script prints the total.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf .gpu && mkdir -p .gpu/data .gpu/wheels
data=$($PY -c 'from landscape_core.data import find_data_dir; print(find_data_dir(None))')
cp "$data"/*-ubyte* .gpu/data/
download="$PY -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels"
$download --no-deps pyhessian==0.1
# The sweep's packages with their dependencies; the image's own copies of the big ones are used instead.
$download "mlflow>=3.0" "optuna>=4.0" "psutil>=5.9"
cd .gpu/wheels
for have in numpy scipy pandas pyarrow matplotlib scikit_learn torch nvidia triton sympy networkx jinja2 \
            pillow fonttools kiwisolver contourpy cycler pyparsing python_dateutil six packaging requests urllib3 \
            idna certifi charset_normalizer markupsafe pyyaml rich pygments markdown_it_py mdurl typing_extensions \
            protobuf joblib threadpoolctl tqdm filelock fsspec; do
  rm -f "${have}"-*.whl "${have//_/-}"-*.whl
done
cd ../..
du -sh .gpu
echo "carry .gpu; on the device: bash benchmarks/gpu_check.sh"

"""Quantize (edgeopt quantize, NNCF, this CPU) and score in OpenVINO the GPU-trained models of the --jobs run."""
import json, subprocess, sys, shutil, os
from pathlib import Path
H = Path('/work/h200run')
out = {}
for c in ['realistic', 'seed1', 'seed2']:
    R = H / 'proj' / c
    (R / 'data').mkdir(parents=True, exist_ok=True)
    if not (R / 'data' / 'prepared').exists():
        os.symlink('/work/exp90s0/data/prepared', R / 'data' / 'prepared')
    shutil.copytree(H / 'models' / c / 'models', R / 'models', dirs_exist_ok=True)
    text = (H / 'work' / c / 'params.yaml').read_text().replace('/work/main/gpurun2/data/train', '/work/shared/data/cifar10-subset/train')
    (R / 'params.yaml').write_text(text)
    if not (R / 'models' / 'quantized' / 'finetuned_ov_int8' / 'model.xml').is_file():
        subprocess.run([sys.executable, '-m', 'edgeopt.cli', 'quantize', '--root', str(R), '--params', str(R / 'params.yaml')], check=True)
    from edgeopt.accuracy import accuracy_in_runtime
    from edgeopt.arrays import load_meta, open_split
    from edgeopt.runtime import load_model
    meta = load_meta(R / 'data' / 'prepared'); x, y = open_split(R / 'data' / 'prepared', 'test')
    accs = {}
    for xml in sorted((R / 'models' / 'quantized').glob('*/model.xml')):
        accs[xml.parent.name] = round(accuracy_in_runtime(load_model(xml, runtime='openvino'), x, y, meta['mean'], meta['std'], 256)[0], 4)
    for onnx in sorted((R / 'models' / 'quantized').glob('*/model.onnx')):
        accs[onnx.parent.name + ' (ort)'] = round(accuracy_in_runtime(load_model(onnx, runtime='onnxruntime'), x, y, meta['mean'], meta['std'], 256)[0], 4)
    out[c] = accs
    print(c, accs, flush=True)
seed = {'realistic': 0, 'seed1': 1, 'seed2': 2}
for s in range(3):
    from edgeopt.runtime import load_model
    m = load_model(H / f'peer-pruned-kd-seed{s}.onnx', runtime='onnxruntime')
    out.setdefault('peer_pruned_kd_here', []).append(round(accuracy_in_runtime(m, x, y, meta['mean'], meta['std'], 256)[0], 4))
print(json.dumps(out, indent=1))
(H / 'int8-here.json').write_text(json.dumps(out, indent=1))

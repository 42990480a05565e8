"""Give every cell of the notebooks named on the command line a stable id if it lacks one (nbformat 4.5)."""
import hashlib
import json
import sys

for path in sys.argv[1:]:
    nb = json.load(open(path))
    seen = {c.get("id") for c in nb["cells"]}
    for i, c in enumerate(nb["cells"]):
        if not c.get("id"):
            h = hashlib.sha1(f"{path}:{i}:{''.join(c['source'])}".encode()).hexdigest()[:8]
            while h in seen:
                h = hashlib.sha1(h.encode()).hexdigest()[:8]
            c["id"] = h
            seen.add(h)
    with open(path, "w") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")

"""A handler of MosaicML's shape that needs packaging<22 (LegacyVersion was removed in 22.0),
which the server's environment (packaging 24+) cannot have."""
from typing import Dict, List

import packaging
import pyparsing
from packaging.version import LegacyVersion, parse


class VersionSortHandler():

    def __init__(self, reverse: bool = False):
        self.reverse = reverse

    def predict(self, model_requests: List[Dict]):
        outputs = []
        for req in model_requests:
            versions = sorted(req['input'], key=parse, reverse=self.reverse)
            outputs.append({
                'sorted': versions,
                'legacy': [v for v in versions if isinstance(parse(v), LegacyVersion)],
                'packaging': packaging.__version__,
                'pyparsing': pyparsing.__version__,
            })
        return outputs

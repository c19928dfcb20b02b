"""Reads a JSON-LD document on standard input, expands it with a JSON-LD
1.1 processor (pyld) and converts it to RDF, and prints
{"expanded": <expanded document>, "quads": <number of RDF statements>}.

Remote contexts are refused: a catalog must be readable offline. Exits 2
when pyld is missing, 1 when the document is not valid JSON-LD."""

import json
import sys

try:
    from pyld import jsonld
except ImportError:
    sys.stderr.write("pyld is not installed (python3 -m pip install pyld)\n")
    sys.exit(2)


def no_remote(url, options=None):
    raise jsonld.JsonLdError(
        "remote context refused: " + url, "jsonld.LoadDocumentError"
    )


def main():
    document = json.load(sys.stdin)
    options = {"documentLoader": no_remote}
    try:
        expanded = jsonld.expand(document, options)
        nquads = jsonld.to_rdf(
            document, dict(options, format="application/n-quads")
        )
    except jsonld.JsonLdError as error:
        sys.stderr.write("not valid JSON-LD: %s\n" % error)
        sys.exit(1)
    quads = [line for line in nquads.splitlines() if line.strip()]
    json.dump({"expanded": expanded, "quads": len(quads)}, sys.stdout)


main()

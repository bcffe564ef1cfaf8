"""Real-world paired SR benchmarks (RealSR, DRealSR, the StableSR / OSEDiff centre crops) as
`lq_pairs` versions: `ingest_paired(store, folder)` (pipeline.paired.ingest); the file naming
of each benchmark is pipeline.paired.layouts."""
from pipeline.paired.ingest import PairedIngestError, PairedIngestResult, ingest_paired
from pipeline.paired.layouts import LAYOUTS

__all__ = ["LAYOUTS", "PairedIngestError", "PairedIngestResult", "ingest_paired"]

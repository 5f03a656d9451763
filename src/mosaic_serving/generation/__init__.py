"""Text generation for causal LMs: per-request sampling, incremental text, continuous batching."""

from mosaic_serving.generation.engine import DecodeCounts, EngineLoad, GenerationEngine
from mosaic_serving.generation.request import GenerationEvent, RequestStatus
from mosaic_serving.generation.sampling import SamplingParams

__all__ = ["DecodeCounts", "EngineLoad", "GenerationEngine", "GenerationEvent", "RequestStatus", "SamplingParams"]

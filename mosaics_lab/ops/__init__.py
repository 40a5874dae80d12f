"""Pure tensor ops every model builds on (imports torch only); each fast op has a naive spec beside it."""

from mosaics_lab.ops.documents import Documents, as_documents, document_ids
from mosaics_lab.ops.kernel_regression import (
    kernel_regression,
    kernel_regression_flex,
    kernel_regression_reference,
    kernel_regression_weights,
)
from mosaics_lab.ops.leaky_average import leaky_average, leaky_average_reference
from mosaics_lab.ops.norms import unit_rows

__all__ = [
    "Documents",
    "as_documents",
    "document_ids",
    "kernel_regression",
    "kernel_regression_flex",
    "kernel_regression_reference",
    "kernel_regression_weights",
    "leaky_average",
    "leaky_average_reference",
    "unit_rows",
]

"""lwkit: the package behind the model-compression course (轻量化)."""

import logging


class _EnumConstantNotice(logging.Filter):
    """Drops one known-harmless torch log line, in one place for every notebook.

    Importing torchao (directly, or through peft / executorch / transformers) makes torch.utils._pytree log
    "<enum '...'> is an Enum subclass and is now natively supported by torch.compile ... register_constant()
    ... deprecated" once per enum. It is a note to torchao's authors, not to a learner, and it would show up
    as a red stderr box in the notebooks. Everything else that logger says still comes through.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "is an Enum subclass" not in record.getMessage()


logging.getLogger("torch.utils._pytree").addFilter(_EnumConstantNotice())

"""The token classifier: a BERT encoder over audio token ids, read out at a real [CLS] token.

Token id layout (shared by training, the bundle and inference):
  0 [PAD], 1 [CLS], 2 [SEP], 3 [MASK], then cluster c of any codebook is id c + TOKEN_OFFSET.
[PAD] is also BERT's `padding_idx`; it never coincides with a cluster, so every cluster embedding trains.
A sequence is [CLS] t_1 ... t_n [SEP] followed by [PAD] up to the batch's longest sequence.

Several codebooks per frame (tokens of shape (frames, codebooks)) are embedded as the sum of one
embedding table per codebook; with one codebook this is exactly BERT's word embedding.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel
from transformers.models.bert.modeling_bert import BertPreTrainedModel

PAD, CLS, SEP, MASK = 0, 1, 2, 3
SPECIAL_TOKENS = {"[PAD]": PAD, "[CLS]": CLS, "[SEP]": SEP, "[MASK]": MASK}
TOKEN_OFFSET = len(SPECIAL_TOKENS)
EXTRA_POSITIONS = 2  # [CLS] and [SEP]

MULTILABEL = "multi_label_classification"
SINGLELABEL = "single_label_classification"
PROBLEM_TYPES = {"multilabel": MULTILABEL, "singlelabel": SINGLELABEL}


class AudioTokenClassifier(BertPreTrainedModel):
    """BertModel (no pooler) -> [CLS] final hidden state -> dropout -> linear, one logit per class."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        n_codebooks = getattr(config, "n_codebooks", 1)
        self.codebook_embeddings = nn.ModuleList(
            nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
            for _ in range(n_codebooks - 1)
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.head = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, positions, codebooks) ids -> (batch, positions, hidden) summed codebook embeddings."""
        embeddings = self.bert.embeddings.word_embeddings(input_ids[..., 0])
        for column, table in enumerate(self.codebook_embeddings, start=1):
            embeddings = embeddings + table(input_ids[..., column])
        return embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(inputs_embeds=self.embed(input_ids), attention_mask=attention_mask).last_hidden_state
        return self.head(self.dropout(hidden[:, 0]))


def classifier_config(
    n_clusters: int,
    n_codebooks: int,
    classes: list[str],
    task: str,
    max_frames: int,
    num_layers: int,
    hidden_size: int,
    num_heads: int,
    intermediate_size: int,
    dropout: float,
    attention: str = "sdpa",
) -> BertConfig:
    """BertConfig whose vocabulary and positions follow from the data, never from a second user setting."""
    return BertConfig(
        vocab_size=n_clusters + TOKEN_OFFSET,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        max_position_embeddings=max_frames + EXTRA_POSITIONS,
        pad_token_id=PAD,
        id2label=dict(enumerate(classes)),
        problem_type=PROBLEM_TYPES[task],
        n_codebooks=n_codebooks,
        n_clusters=n_clusters,
        attn_implementation=attention,
    )


def loss_function(task: str) -> nn.Module:
    return nn.BCEWithLogitsLoss() if task == "multilabel" else nn.CrossEntropyLoss()


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Scores in [0, 1]: independent sigmoids (multi-label) or a softmax over classes (single-label)."""
    logits = logits.float()
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=-1)

# Bazel's test sharding protocol for seed campaigns run from shell tests.
# Source it with TOTAL_SEEDS (and optionally FIRST_SEED, default 1) set:
#
#   TOTAL_SEEDS=4000 source harness/testing/shard_seeds.sh
#   explore --seed="$SHARD_FIRST_SEED" --seeds="$SHARD_SEEDS"
#
# With shard_count = N, Bazel runs N copies with TEST_TOTAL_SHARDS=N and
# TEST_SHARD_INDEX=i. Shard i owns one contiguous block of the seeds
# FIRST_SEED .. FIRST_SEED+TOTAL_SEEDS-1: the first TOTAL_SEEDS mod N shards
# one seed more than the rest, so the blocks are disjoint and cover every
# seed. Touches TEST_SHARD_STATUS_FILE (Bazel's "I understood sharding").
# A bad index is fatal: a wrong share would silently lose seeds.
: "${TOTAL_SEEDS:?TOTAL_SEEDS must be set}"
FIRST_SEED=${FIRST_SEED:-1}
_shards=${TEST_TOTAL_SHARDS:-1}
_index=${TEST_SHARD_INDEX:-0}
if ! [[ $_shards =~ ^[0-9]+$ && $_index =~ ^[0-9]+$ ]] || (( _shards < 1 || _index >= _shards )); then
  echo "shard_seeds: shard index '$_index' of '$_shards' shards is out of range" >&2
  exit 2
fi
[[ -n "${TEST_SHARD_STATUS_FILE:-}" ]] && touch "$TEST_SHARD_STATUS_FILE"
_base=$(( TOTAL_SEEDS / _shards ))
_extra=$(( TOTAL_SEEDS % _shards ))
SHARD_SEEDS=$(( _base + (_index < _extra ? 1 : 0) ))
SHARD_FIRST_SEED=$(( FIRST_SEED + _index * _base + (_index < _extra ? _index : _extra) ))
SHARD_NAME="shard $_index of $_shards: seeds $SHARD_FIRST_SEED..$(( SHARD_FIRST_SEED + SHARD_SEEDS - 1 ))"
unset _shards _index _base _extra

# Sourced by the scripts: offline hub access, and the shared data folder when it sits beside the checkout.
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
export TOKENIZERS_PARALLELISM=false
if [ -z "${EDITHARM_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  EDITHARM_DATA_DIR=$(cd ../shared/data && pwd)
  export EDITHARM_DATA_DIR
fi

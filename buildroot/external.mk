include $(sort $(wildcard $(BR2_EXTERNAL_GATELET_PATH)/package/*/*.mk))

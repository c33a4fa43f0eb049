# Test stand-in for the OpenWrt SDK's rules.mk (openwrt/check.sh): only what openwrt/gatelet/Makefile
# uses, with the SDK's definitions of the install commands.
INCLUDE_DIR:=$(TOPDIR)/include
INSTALL_DIR:=install -d -m0755
INSTALL_BIN:=install -m0755
INSTALL_DATA:=install -m0644
INSTALL_CONF:=install -m0600
TARGET_CC_NOCACHE:=stub-target-gcc

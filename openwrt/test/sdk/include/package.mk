# Test stand-in for the OpenWrt SDK's include/package.mk (openwrt/check.sh). BuildPackage makes
# three targets instead of building an .ipk:
#   show-package   prints the variables of Package/NAME and the PKG_* variables
#   compile        runs Build/Compile (openwrt/check.sh puts a recording `cargo` first in PATH)
#   install        runs Package/NAME/install into $(DEST)
#   postinst       writes Package/NAME/postinst (as the SDK expands it) to the file $(DEST)
PKG_BUILD_DIR ?= $(BUILD_DIR)/$(PKG_NAME)-$(PKG_VERSION)

define BuildPackage
$(eval $(Package/$(1)))
show-package:
	@echo 'PKG_NAME=$(PKG_NAME)'
	@echo 'PKG_VERSION=$(PKG_VERSION)'
	@echo 'PKG_SOURCE=$(PKG_SOURCE)'
	@echo 'PKG_LICENSE_FILES=$(PKG_LICENSE_FILES)'
	@echo 'PKG_BUILD_DEPENDS=$(PKG_BUILD_DEPENDS)'
	@echo 'DEPENDS=$(DEPENDS)'
	@echo 'USERID=$(USERID)'
	@echo 'CONFFILES=$(strip $(Package/$(1)/conffiles))'
compile:
	$(Build/Compile)
install:
	$(call Package/$(1)/install,$(DEST))
postinst:
	$$(file >$(DEST),$$(Package/$(1)/postinst))
	@true
endef

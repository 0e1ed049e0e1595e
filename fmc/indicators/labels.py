"""Labels in Chinese and English for indicators, statuses, levels and industries (DESIGN §5).

One table each, used by the API's CSV headers, ``fmc indicators`` and the dashboards.
"""

from __future__ import annotations

from collections.abc import Mapping

# indicator -> (Chinese, English, unit)
INDICATOR_LABELS: Mapping[str, tuple[str, str, str]] = {
    "nc_rate": ("装备数控化率", "equipment NC rate", "%"),
    "networking_rate": ("机器联网率", "machine networking rate", "%"),
    "energy": ("综合能源消费量", "total energy consumption", "tce"),
    "energy_intensity": ("单位工业增加值能耗", "energy per unit of value added", "tce/10⁴ yuan"),
    "water_intensity": ("单位工业增加值用水量", "water per unit of value added", "m³/10⁴ yuan"),
    "wastewater_intensity": ("单位工业增加值废水排放量", "wastewater per unit of value added", "m³/10⁴ yuan"),
    "labour_productivity": ("全员劳动生产率", "labour productivity", "10⁴ yuan/person"),
    "rd_intensity": ("R&D经费支出占主营业务收入比重", "R&D expense / main business revenue", "%"),
    "new_product_ratio": ("新产品产值率", "new-product output ratio", "%"),
}

STATUS_LABELS: Mapping[str, tuple[str, str]] = {
    "met": ("达标", "met"),
    "missed": ("未达标", "missed"),
    "insufficient_data": ("数据不足", "insufficient data"),
    "no_target": ("无目标", "no target"),
}

LEVEL_LABELS: Mapping[str, tuple[str, str]] = {
    "enterprise": ("企业", "enterprise"),
    "county": ("县（市、区）", "county"),
    "city": ("设区市", "city"),
    "province": ("省", "province"),
    "industry": ("行业", "industry"),
}

# GB/T 4754-2017 manufacturing divisions (门类 C, 13-43): code -> (Chinese, English)
INDUSTRY_DIVISIONS: Mapping[str, tuple[str, str]] = {
    "13": ("农副食品加工业", "agricultural and sideline food processing"),
    "14": ("食品制造业", "food manufacturing"),
    "15": ("酒、饮料和精制茶制造业", "liquor, beverages and refined tea"),
    "16": ("烟草制品业", "tobacco products"),
    "17": ("纺织业", "textiles"),
    "18": ("纺织服装、服饰业", "textile wearing apparel and clothing"),
    "19": ("皮革、毛皮、羽毛及其制品和制鞋业", "leather, fur, feathers and footwear"),
    "20": ("木材加工和木、竹、藤、棕、草制品业", "wood, bamboo, rattan, palm and straw products"),
    "21": ("家具制造业", "furniture"),
    "22": ("造纸和纸制品业", "paper and paper products"),
    "23": ("印刷和记录媒介复制业", "printing and reproduction of recording media"),
    "24": ("文教、工美、体育和娱乐用品制造业", "cultural, educational, arts, sports and entertainment articles"),
    "25": ("石油、煤炭及其他燃料加工业", "petroleum, coal and other fuel processing"),
    "26": ("化学原料和化学制品制造业", "chemical raw materials and chemical products"),
    "27": ("医药制造业", "pharmaceuticals"),
    "28": ("化学纤维制造业", "chemical fibres"),
    "29": ("橡胶和塑料制品业", "rubber and plastics products"),
    "30": ("非金属矿物制品业", "non-metallic mineral products"),
    "31": ("黑色金属冶炼和压延加工业", "ferrous metal smelting and rolling"),
    "32": ("有色金属冶炼和压延加工业", "non-ferrous metal smelting and rolling"),
    "33": ("金属制品业", "metal products"),
    "34": ("通用设备制造业", "general-purpose machinery"),
    "35": ("专用设备制造业", "special-purpose machinery"),
    "36": ("汽车制造业", "automobiles"),
    "37": ("铁路、船舶、航空航天和其他运输设备制造业", "railway, ships, aerospace and other transport equipment"),
    "38": ("电气机械和器材制造业", "electrical machinery and equipment"),
    "39": ("计算机、通信和其他电子设备制造业", "computers, communication and other electronic equipment"),
    "40": ("仪器仪表制造业", "instruments and meters"),
    "41": ("其他制造业", "other manufacturing"),
    "42": ("废弃资源综合利用业", "comprehensive use of waste resources"),
    "43": ("金属制品、机械和设备修理业", "repair of metal products, machinery and equipment"),
}

# The plan's ten key traditional industries (agri-food spans divisions 13-15).
KEY_INDUSTRIES: Mapping[str, tuple[str, ...]] = {
    "textiles": ("17",),
    "apparel": ("18",),
    "leather": ("19",),
    "chemicals": ("26",),
    "chemical_fibres": ("28",),
    "paper": ("22",),
    "rubber_plastics": ("29",),
    "non_metallic_minerals": ("30",),
    "non_ferrous_metals": ("32",),
    "agri_food": ("13", "14", "15"),
}


def indicator_label(indicator: str, lang: str = "zh") -> str:
    zh, en, _ = INDICATOR_LABELS[indicator]
    return zh if lang == "zh" else en


def industry_label(code: str, lang: str = "zh") -> str:
    names = INDUSTRY_DIVISIONS.get(code[:2])
    if names is None:
        return code
    return names[0] if lang == "zh" else names[1]
